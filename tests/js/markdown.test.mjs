// The page's Markdown: safe by construction, blocks split as the page re-renders them, citations numbered.
import assert from "node:assert/strict";
import { createRequire } from "node:module";
import { test } from "node:test";

import { citationContext, renderMarkdown, safeUrl, splitBlocks } from "../../glm4_local/web/markdown.js";

const require = createRequire(import.meta.url);
const katex = require("../../glm4_local/web/vendor/katex/katex.min.js");
const hljs = require("../../glm4_local/web/vendor/highlight/highlight.min.js");
// the family's citation pattern, as GET /v1/glm4/tools gives it (tests/test_page_js.py passes the family's own)
const CITATION = process.env.GLM4_CITATION ?? "【([^†】\\n]{1,20})†([^】\\n]{0,200})】";
const context = {
  citation: CITATION,
  math: (tex, display) => katex.renderToString(tex, { displayMode: display, throwOnError: false, trust: false }),
  highlight: (code, lang) => (hljs.getLanguage(lang) ? hljs.highlight(code, { language: lang }).value : code),
};

const FORBIDDEN = /^(script|img|iframe|style|object|embed|link|meta|form|input|base)$/i;
const HOSTILE = [
  "<script>alert(1)</script>",
  '<img src=x onerror="alert(1)">',
  "[click](javascript:alert(1))",
  "[click]( JaVaScRiPt:alert(1))",
  "[click](java\u0000script:alert(1))",
  "[x](data:text/html,<script>alert(1)</script>)",
  "![p](javascript:alert(1))",
  '<a href="javascript:alert(1)">a</a>',
  "**<svg onload=alert(1)>**",
  "| a | b |\n|---|---|\n| <iframe src=x> | `<b>` |",
  "```html\n<script>alert(1)</script>\n```",
  "$\\href{javascript:alert(1)}{x}$",
  "$$\\url{javascript:alert(1)}$$",
  "【1†<img src=x onerror=alert(1)>】",
  "> <style>body{display:none}</style>",
];

test("nothing hostile survives as markup", () => {
  const { cite } = citationContext({ 1: { title: "<b>t</b>", url: "javascript:alert(1)" } });
  for (const source of HOSTILE) {
    const html = renderMarkdown(source, { ...context, cite });
    // every "<" in the output opens a tag this page (or KaTeX) wrote: the source's own are escaped
    for (const [, tag, attributes] of html.matchAll(/<\/?([a-zA-Z][\w-]*)([^>]*)>/g)) {
      assert.ok(!FORBIDDEN.test(tag), `${source}: <${tag}>`);
      for (const [, name] of attributes.matchAll(/\s([\w:-]+)=/g)) {
        assert.ok(!/^on/i.test(name) && name !== "src" && name !== "srcdoc", `${source}: ${name}= in <${tag}>`);
      }
    }
    assert.doesNotMatch(html, /href="(?!https?:|mailto:)/i, source);
  }
});

test("only http(s) and mailto addresses become links", () => {
  assert.equal(safeUrl("https://example.org/a?b=1"), "https://example.org/a?b=1");
  assert.equal(safeUrl("mailto:a@b.c"), "mailto:a@b.c");
  for (const url of ["javascript:x", " javascript:x", "data:text/html,x", "vbscript:x", "/relative", "//evil.org"]) {
    assert.equal(safeUrl(url), null, url);
  }
  const html = renderMarkdown("see [docs](https://example.org/x) and https://example.org/y.", context);
  assert.match(html, /<a href="https:\/\/example.org\/x" target="_blank" rel="noopener noreferrer">docs<\/a>/);
  assert.match(html, /<a href="https:\/\/example.org\/y"[^>]*>https:\/\/example.org\/y<\/a>\./);
});

test("GLM-4's Markdown renders: headings, lists, tables, code, math, emphasis", () => {
  const html = renderMarkdown("# 标题\n\n- one\n- **two**\n  - nested\n\n1. first\n2. second\n\n| a | b |\n|---|---|\n" +
    "| 1 | `x` |\n\n```python\nprint('hi')\n```\n\n$$\nE = mc^2\n$$\n\nInline $a^2$ and \\(b\\), *it* ~~no~~.", context);
  assert.match(html, /<h1>标题<\/h1>/);
  assert.match(html, /<ul><li>one<\/li><li><strong>two<\/strong><ul><li>nested<\/li><\/ul><\/li><\/ul>/);
  assert.match(html, /<ol><li>first<\/li><li>second<\/li><\/ol>/);
  assert.match(html, /<th>a<\/th><th>b<\/th>.*<td>1<\/td><td><code>x<\/code><\/td>/);
  assert.match(html, /class="hljs language-python"><span class="hljs-built_in">print<\/span>/);
  assert.match(html, /class="math-block"><span class="katex-display">/);
  assert.equal((html.match(/class="katex"/g) || []).length, 3);
  assert.match(html, /<em>it<\/em> <del>no<\/del>/);
});

test("prices are not math; an unfinished fence is code while it streams", () => {
  assert.doesNotMatch(renderMarkdown("It costs $5 and $10.", context), /katex/);
  const html = renderMarkdown("```js\nlet a = 1", context);
  assert.match(html, /language-js/);
  assert.match(html, /<span class="hljs-keyword">let<\/span> a = <span class="hljs-number">1<\/span>/);
});

test("blocks split at blank lines, never inside code or display math", () => {
  const source = "para one\nline two\n\n```\ncode\n\nmore code\n```\n\n$$\na\n\nb\n$$\n\nlast";
  assert.deepEqual(splitBlocks(source), ["para one\nline two", "```\ncode\n\nmore code\n```", "$$\na\n\nb\n$$", "last"]);
  // streaming: each longer prefix changes only the last block
  for (let n = 1; n < source.length; n += 1) {
    const before = splitBlocks(source.slice(0, n));
    const after = splitBlocks(source.slice(0, n + 1));
    assert.deepEqual(after.slice(0, before.length - 1), before.slice(0, -1), `at ${n}`);
  }
});

test("citations are numbered by first use and link to their source", () => {
  const { cite, cited } = citationContext({ 7: { title: "Cooking", url: "https://example.org/cook" } });
  const html = renderMarkdown("Pasta【7†recipe】 water【7†again】 salt【9†other】.", { ...context, cite });
  assert.match(html, /Pasta<a class="cite" href="https:\/\/example.org\/cook" title="Cooking"[^>]*>\[1\]<\/a>/);
  assert.match(html, /water<a class="cite"[^>]*>\[1\]<\/a>/);
  assert.match(html, /salt<sup class="cite" title="other">\[2\]<\/sup>/);
  assert.deepEqual(cited.map((c) => c.id), ["7", "9"]);
});

test("any reply renders, however deep its nesting: the page never throws", () => {
  const hostile = [
    "> ".repeat(2000) + "deep",  // 4 KB of quotes in quotes
    `$${"{".repeat(5000)}x${"}".repeat(5000)}$`,  // inline math 5,000 braces deep
    `$$${"{".repeat(5000)}x${"}".repeat(5000)}$$`,
    `${"- ".repeat(3000)}item`,  // lists in lists
    Array.from({ length: 3000 }, (_, i) => `${"  ".repeat(i)}- level ${i}`).join("\n"),
    `${"**[".repeat(3000)}x${"](https://e.org)**".repeat(3000)}`,
    `${"~~".repeat(5000)}x`,
  ];
  for (const source of hostile) {
    const html = renderMarkdown(source, context);
    assert.ok(typeof html === "string" && html.length > 0);
    assert.ok(!/<script/i.test(html));
  }
  assert.ok(renderMarkdown("> ".repeat(2000) + "deep", context).includes("deep"));  // the text is still there
});

test("a block that fails is shown as its text", async () => {
  const { safeBlock } = await import("../../glm4_local/web/markdown.js");
  const failing = { math: () => { throw new RangeError("Maximum call stack size exceeded"); } };
  assert.match(safeBlock("$$x$$", failing), /x/);
  assert.match(safeBlock("a $x$ b", failing), /<code class="math">\$x\$<\/code>/);
  const broken = { citation: CITATION, cite: () => { throw new Error("boom"); } };
  assert.equal(safeBlock("see 【1†x】 <b>", broken), '<p class="unrendered">see 【1†x】 &lt;b&gt;</p>');
});
