// GLM-4's Markdown as HTML, safe by construction: every character of the source is escaped, and only
// the HTML this file writes (and KaTeX's and highlight.js's, which escape their input) reaches the page.
// A reply or a fetched page that contains <script> or <img onerror> shows it as text; a link is kept
// only for http(s) and mailto addresses.
//
// A reply is split into top-level blocks (paragraphs, code fences, lists, tables, math); while it
// streams only its last block changes, so the page re-renders only that one (see app.js).
//
// A reply is whatever the model (or a page it quotes) wrote: nesting (quotes in quotes, lists in lists,
// bold in links in bold) is followed MAX_DEPTH levels deep and shown as text below that, math that KaTeX
// cannot draw is shown as its source, and a block that fails anyway is shown as text (safeBlock): one
// broken message never breaks the page.

const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
export const MAX_DEPTH = 16;

// the context one level deeper, or null past MAX_DEPTH (then the rest is text)
function deeper(context) {
  const depth = (context.depth || 0) + 1;
  return depth > MAX_DEPTH ? null : { ...context, depth };
}

function plainText(text) {
  return escapeHtml(text).replace(/\n/g, "<br>");
}

export function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => ESCAPES[c]);
}

// an address a link may have; anything else (javascript:, data:, vbscript:, relative tricks) is null
export function safeUrl(url) {
  const cleaned = String(url).replace(/[\u0000-\u0020\u007f-\u009f]/g, "");
  return /^(https?:\/\/|mailto:)/i.test(cleaned) ? cleaned : null;
}

const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([\w+#.-]*)[^\n]*$/;
const MATH_OPEN = /^ {0,3}(\$\$|\\\[)/;

// the source cut into top-level blocks: a blank line ends one, except inside a code fence or $$ math
export function splitBlocks(source) {
  const blocks = [];
  let current = [];
  let fence = null;
  let math = null;
  const flush = () => {
    if (current.length) blocks.push(current.join("\n"));
    current = [];
  };
  for (const line of source.split("\n")) {
    if (fence) {
      current.push(line);
      if (new RegExp(`^ {0,3}${fence[0]}{${fence.length},}\\s*$`).test(line)) {
        fence = null;
        flush();
      }
      continue;
    }
    if (math) {
      current.push(line);
      if (line.trimEnd().endsWith(math)) {
        math = null;
        flush();
      }
      continue;
    }
    const opens = FENCE.exec(line);
    if (opens) {
      flush();
      fence = opens[1];
      current.push(line);
      continue;
    }
    const mathOpen = MATH_OPEN.exec(line);
    if (mathOpen && current.length === 0) {
      const closer = mathOpen[1] === "$$" ? "$$" : "\\]";
      const rest = line.trim().slice(2);
      current.push(line);
      if (!(rest.length >= 2 && rest.endsWith(closer))) math = closer;
      else flush();
      continue;
    }
    if (line.trim() === "") flush();
    else current.push(line);
  }
  flush();
  return blocks;
}

// -- inline ---------------------------------------------------------------------------------------
// The model's citations (context.citation: its family's pattern, two groups, from GET /v1/glm4/tools)
// are one of the inline forms; a bare address never runs into one (its marks end the address).
const NO_CITATION = "(?!)()()";  // never matches, and keeps the groups' numbers
const inlinePatterns = new Map();

function inlinePattern(citation) {
  const key = citation || NO_CITATION;
  if (!inlinePatterns.has(key)) {
    const marks = citation ? `${citation[0]}${citation.at(-1)}`.replace(/[\\\]^-]/g, "\\$&") : "";
    inlinePatterns.set(key, new RegExp(
      [
        "(`+)([^`]|[^`][\\s\\S]*?[^`])\\1(?!`)", // 1,2 code
        "\\\\\\(([\\s\\S]+?)\\\\\\)", // 3 \( math \)
        "\\$\\$([\\s\\S]+?)\\$\\$", // 4 $$ math $$ inline
        "\\$([^\\s$](?:[^$\\n]*?[^\\s$])?)\\$(?![\\w$])", // 5 $math$
        `(?:${key})`, // 6,7 citation
        "(!?)\\[([^\\]\\n]*)\\]\\(\\s*([^)\\s]*)(?:\\s+\"[^\"\\n]*\")?\\s*\\)", // 8,9,10 link / image
        `(https?:\\/\\/[^\\s<>()${marks}"']*[^\\s<>()${marks}"'.,;:!?])`, // 11 bare address
        "\\*\\*(?=\\S)([\\s\\S]*?\\S)\\*\\*", // 12 bold
        "(?<![\\w])__(?=\\S)([\\s\\S]*?\\S)__(?![\\w])", // 13 bold
        "~~(?=\\S)([\\s\\S]*?\\S)~~", // 14 strikethrough
        "\\*(?=[^\\s*])([\\s\\S]*?[^\\s*])\\*", // 15 italic
        "(?<![\\w])_(?=[^\\s_])([\\s\\S]*?[^\\s_])_(?![\\w])", // 16 italic
      ].join("|"),
      "g",
    ));
  }
  return inlinePatterns.get(key);
}

function link(text, url, context) {
  const safe = safeUrl(url);
  if (!safe) return text;
  return `<a href="${escapeHtml(safe)}" target="_blank" rel="noopener noreferrer">${text}</a>`;
}

export function renderInline(text, context = {}) {
  if ((context.depth || 0) > MAX_DEPTH) return plainText(text);
  const inner = deeper(context) || context;
  let html = "";
  let last = 0;
  // matchAll: its own copy of the pattern, so recursion is safe
  for (const m of text.matchAll(inlinePattern(context.citation))) {
    html += escapeHtml(text.slice(last, m.index)).replace(/\n/g, "<br>");
    last = m.index + m[0].length;
    const [whole] = m;
    if (m[1] !== undefined) html += `<code>${escapeHtml(m[2])}</code>`;
    else if (m[3] !== undefined) html += math(m[3], false, context, whole);
    else if (m[4] !== undefined) html += math(m[4], false, context, whole);
    else if (m[5] !== undefined) html += math(m[5], false, context, whole);
    else if (m[6] !== undefined) html += context.cite ? context.cite(m[6], m[7]) : escapeHtml(whole);
    else if (m[9] !== undefined) html += link(renderInline(m[9], inner) || escapeHtml(m[10]), m[10], context);
    else if (m[11] !== undefined) html += link(escapeHtml(m[11]), m[11], context);
    else if (m[12] !== undefined) html += `<strong>${renderInline(m[12], inner)}</strong>`;
    else if (m[13] !== undefined) html += `<strong>${renderInline(m[13], inner)}</strong>`;
    else if (m[14] !== undefined) html += `<del>${renderInline(m[14], inner)}</del>`;
    else if (m[15] !== undefined) html += `<em>${renderInline(m[15], inner)}</em>`;
    else if (m[16] !== undefined) html += `<em>${renderInline(m[16], inner)}</em>`;
  }
  return html + escapeHtml(text.slice(last)).replace(/\n/g, "<br>");
}

function math(tex, display, context, source) {
  if (!context.math) return `<code class="math">${escapeHtml(source)}</code>`;
  try {
    return context.math(tex, display);
  } catch {  // KaTeX's own limits (braces thousands deep overflow its parser's stack): the source, as text
    return `<code class="math">${escapeHtml(source)}</code>`;
  }
}

// -- blocks ---------------------------------------------------------------------------------------
function codeBlock(block, context) {
  const lines = block.split("\n");
  const [, fence, lang] = FENCE.exec(lines[0]);
  const closed = lines.length > 1 && new RegExp(`^ {0,3}${fence[0]}{${fence.length},}\\s*$`).test(lines.at(-1));
  const code = lines.slice(1, closed ? -1 : undefined).join("\n");
  const body = context.highlight ? context.highlight(code, lang) : escapeHtml(code);
  const language = lang ? ` language-${escapeHtml(lang)}` : "";
  return `<div class="code"><div class="code-head"><span>${escapeHtml(lang || "text")}</span>` +
    `<button type="button" class="copy-code">Copy</button></div><pre><code class="hljs${language}">${body}</code></pre></div>`;
}

function mathBlock(block, context) {
  const text = block.trim();
  const closer = text.startsWith("$$") ? "$$" : "\\]";
  const closed = text.length >= 4 && text.endsWith(closer);
  const tex = text.slice(2, closed ? -2 : undefined);
  if (!closed || !context.math) return `<pre class="math">${escapeHtml(block)}</pre>`;
  return `<div class="math-block">${math(tex, true, context, block)}</div>`;
}

const LIST_ITEM = /^( *)([-*+]|\d{1,9}[.)])\s+(.*)$/;
const TABLE_RULE = /^\s*\|?\s*:?-{2,}:?\s*(\|\s*:?-{2,}:?\s*)*\|?\s*$/;

function list(lines, outer) {
  const context = deeper(outer);
  if (!context) return `<p>${plainText(lines.join("\n"))}</p>`;
  const first = LIST_ITEM.exec(lines[0]);
  const indent = first[1].length;
  const ordered = /\d/.test(first[2]);
  const items = [];
  for (const line of lines) {
    const item = LIST_ITEM.exec(line);
    if (item && item[1].length <= indent) items.push([item[3]]);
    else if (items.length) items.at(-1).push(line.slice(Math.min(indent + 2, line.length - line.trimStart().length)));
    else items.push([line]);
  }
  const rendered = items.map(([head, ...rest]) => {
    const nested = rest.length && LIST_ITEM.test(rest[0]) ? list(rest, context) : "";
    const more = nested ? "" : rest.length ? `<br>${renderInline(rest.join("\n"), context)}` : "";
    return `<li>${renderInline(head, context)}${more}${nested}</li>`;
  });
  const start = ordered && parseInt(first[2], 10) !== 1 ? ` start="${parseInt(first[2], 10)}"` : "";
  return ordered ? `<ol${start}>${rendered.join("")}</ol>` : `<ul>${rendered.join("")}</ul>`;
}

function cells(row) {
  return row.trim().replace(/^\|/, "").replace(/\|$/, "").split("|").map((c) => c.trim());
}

function table(lines, context) {
  const head = cells(lines[0]).map((c) => `<th>${renderInline(c, context)}</th>`).join("");
  const rows = lines.slice(2).map((r) => `<tr>${cells(r).map((c) => `<td>${renderInline(c, context)}</td>`).join("")}</tr>`);
  return `<div class="table"><table><thead><tr>${head}</tr></thead><tbody>${rows.join("")}</tbody></table></div>`;
}

export function renderBlock(block, context = {}) {
  const lines = block.split("\n");
  if (FENCE.test(lines[0])) return codeBlock(block, context);
  if (MATH_OPEN.test(lines[0])) return mathBlock(block, context);
  const heading = /^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$/.exec(block);
  if (heading && lines.length === 1) {
    const level = heading[1].length;
    return `<h${level}>${renderInline(heading[2], context)}</h${level}>`;
  }
  if (/^ {0,3}([-*_])(\s*\1){2,}\s*$/.test(block)) return "<hr>";
  if (lines.every((l) => /^ {0,3}>/.test(l))) {
    const inner = deeper(context);
    if (!inner) return `<p>${plainText(block)}</p>`;
    return `<blockquote>${renderMarkdown(lines.map((l) => l.replace(/^ {0,3}> ?/, "")).join("\n"), inner)}</blockquote>`;
  }
  if (LIST_ITEM.test(lines[0])) return list(lines, context);
  if (lines.length >= 2 && lines[0].includes("|") && TABLE_RULE.test(lines[1])) return table(lines, context);
  if (heading) {  // a heading line, then text under it with no blank line between
    return renderBlock(lines[0], context) + renderBlock(lines.slice(1).join("\n"), context);
  }
  return `<p>${renderInline(block, context)}</p>`;
}

export function renderMarkdown(source, context = {}) {
  return splitBlocks(source).map((block) => renderBlock(block, context)).join("");
}

// a block as HTML, or as its text when rendering it failed for any reason
export function safeBlock(block, context = {}) {
  try {
    return renderBlock(block, context);
  } catch {
    return `<p class="unrendered">${plainText(block)}</p>`;
  }
}

// Numbered citations, as the terminal shows them: a citation of source 7 becomes [1], a link to the page the
// browser opened (sources: {id: {title, url}} from the server; unknown ids are numbered, unlinked).
export function citationContext(sources = {}) {
  const numbers = new Map();
  const cited = [];
  const cite = (id, text) => {
    const source = sources[id];
    const key = source ? source.url : `#${id}`;
    if (!numbers.has(key)) {
      numbers.set(key, numbers.size + 1);
      cited.push({ id, text, source: source || null });
    }
    const n = numbers.get(key);
    const url = source && safeUrl(source.url);
    const title = escapeHtml(source ? source.title : text);
    if (!url) return `<sup class="cite" title="${title}">[${n}]</sup>`;
    return `<a class="cite" href="${escapeHtml(url)}" title="${title}" target="_blank" rel="noopener noreferrer">[${n}]</a>`;
  };
  return { cite, cited };
}
