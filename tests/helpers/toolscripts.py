"""Scripted replies for tiny GGUFs: a call of a tool and the answer after its result, or an answer alone.

Each word is one token of the model's vocabulary (tests/helpers/factory.py adds them), and the model maps each
token to the next one whatever the sampling, so a reply is fixed; a word must not repeat in a script.
"""

from __future__ import annotations

import itertools
from typing import Any

CODE = "open('/mnt/data/hi.txt', 'w').write('hi')\nprint(6 * 7)"
SLEEP = "import time\ntime.sleep(60)"
ACTIONS = 'search("pasta recipe")\nmclick([0])'
# output that would write the clipboard (OSC 52), set the title and clear the screen if a terminal got it
ESCAPES = "print('\\x1b]52;c;cHduZWQ=\\x07\\x1b]0;TITLE-SET\\x07\\x1b[2Jafter\\rover')"
ESCAPED_REPLY = "\x1b]0;REPLY-TITLE\x07"
# what code may leave in /mnt/data for the server to hand out: a FIFO, a large file, a name with "?"
FILES = ("import os\nos.mkfifo('/mnt/data/trap.txt')\nopen('/mnt/data/c?d.txt', 'w').write('cd')\n"
         "open('/mnt/data/big.bin', 'wb').write(b'z' * (48 * 2**20))")
ADD = '{"a": 40, "b": 2}'
CITED = "【7†recipe】"
# a 16×16 PNG shown as the cell's result, as a matplotlib plot would be
PNG = "iVBORw0KGgoAAAANSUhEUgAAABAAAAAQCAIAAACQkWg2AAAAFklEQVR42mPQiDpBEmIY1TCqYfhqAADQmEoQ5RcxtAAAAABJRU5ErkJggg=="
# a plot, a file in /mnt/data, and output that is HTML which would run if a page inserted it as HTML
PLOT = (f"from IPython.display import Image, display\nimport base64\ndisplay(Image(base64.b64decode('{PNG}')))\n"
        "open('/mnt/data/points.csv', 'w').write('x,y\\n1,2\\n')\n"
        "print('<script>document.title=1</script><img src=x onerror=document.title=2>')")
HOSTILE = ("<script>document.title='pwned'</script>", " <img src=x onerror=\"document.title='pwned'\">",
           " [click me](javascript:document.title='pwned')", " **bold** and $x^2$")
LONG_CYCLE = ("Some **bold** words and `code` in a paragraph", " that goes on.\n\n", "```python\n", "def f(x):\n",
              "    return x * 2\n", "```\n\n", "A list:\n\n", "- item $x^2$\n", "- another item\n\n")
SCRIPTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {  # the call's tokens, the answer's after it
    "python": (("python", "\n", CODE), ("Sunny", " day")),
    "sleep": (("python", "\n", SLEEP), ("Sunny", " day")),
    "files": (("python", "\n", FILES), ("Sunny", " day")),
    "escapes": (("python", "\n", ESCAPES), ("Sunny", ESCAPED_REPLY, " day")),
    "loop": (("python", "\n", "print(1)"), ()),  # calls again after every result
    "browser": (("simple_browser", "\n", ACTIONS), ("Sunny", CITED, " day")),
    "mcp": (("add", "\n", ADD), ("Sunny", " day")),
    "plot": (("python", "\n", PLOT), ("Here", " is", " the", " plot.")),
    "hostile": ((), HOSTILE),
    "chinese": ((), ("你好", "，", "世界", "！", " 北京是中国的首都。")),
}


def gguf_fields(name: str) -> dict[str, Any]:
    """make_gguf's keyword arguments for SCRIPTS[name], or "long": a reply that cycles through Markdown
    blocks (paragraphs, code, lists, math) until max_tokens."""
    if name == "long":
        cycle = [*LONG_CYCLE, LONG_CYCLE[0]]
        script = (("<|assistant|>", "\n"), ("\n", LONG_CYCLE[0]), *itertools.pairwise(cycle))
        return {"extra_tokens": LONG_CYCLE, "script": script}
    call, answer = SCRIPTS[name]
    words = tuple(w for w in (*call, *answer) if w != "\n")
    if not call:
        chain = ["<|assistant|>", "\n", *answer, "<|user|>"]
        return {"extra_tokens": words, "script": tuple(itertools.pairwise(chain))}
    chain = ["<|assistant|>", *call, "<|observation|>"]
    script = [*itertools.pairwise(chain), *itertools.pairwise([*answer, "<|user|>"])]
    return {"extra_tokens": words, "script": tuple(script), "after_observation": answer[0] if answer else call[0]}
