"""lm-evaluation-harness itself against a real `glm4-local serve`, with no special arguments: a multiple-choice
task through `local-completions` (one request at a time and in batches), generation through it and through
`local-chat-completions`, on tasks written here as local files. Each score lm-eval records is checked
against llama.cpp's own logits for the tokens the server's tokenizer gave it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.logits import reference_logprobs
from helpers.serving import Server

pytest.importorskip("lm_eval", reason="needs lm-evaluation-harness (the [dev] extra)")
pytestmark = [pytest.mark.processes, pytest.mark.heavy]  # a server and lm-eval's CLI (~10 s a run)

QUESTIONS = [{"question": f"What is {a} plus {b}?", "choices": [str(a + b), str(a + b + 1), str(a * b)],
              "answer": 0} for a, b in ((1, 2), (3, 4), (5, 6), (2, 2))]
MULTIPLE_CHOICE = """task: glm4_local_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
"""
GENERATION = """task: glm4_local_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "Q: {{{{question}}}}\\nA:"
doc_to_target: "{{{{choices[0]}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 6
  do_sample: false
metric_list:
  - metric: exact_match
"""


@pytest.fixture(scope="module")
def tasks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tasks")
    data = folder / "questions.jsonl"
    data.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS), encoding="utf-8")
    (folder / "mc.yaml").write_text(MULTIPLE_CHOICE.format(data=data), encoding="utf-8")
    (folder / "gen.yaml").write_text(GENERATION.format(data=data), encoding="utf-8")
    return folder


def lm_eval(server: Server, tasks: Path, out: Path, model: str, task: str, *args: str) -> list[dict]:
    """Run lm-eval's CLI; the samples it logged for `task`."""
    out.mkdir(parents=True, exist_ok=True)
    endpoint = "chat/completions" if model == "local-chat-completions" else "completions"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(out / "hf")}
    command = [sys.executable, "-m", "lm_eval", "run", "--model", model, "--model_args",
               f"model=tiny,base_url={server.base_url}/{endpoint}", "--tasks", task, "--include_path", str(tasks),
               "--output_path", str(out), "--log_samples", *args]
    done = subprocess.run(command, env=env, cwd=out, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    [samples] = out.glob(f"*/samples_{task}_*.jsonl")
    return [json.loads(line) for line in samples.read_text(encoding="utf-8").splitlines()]


def tokenize(server: Server, text: str) -> list[int]:
    status, _, body = server.request("POST", "/tokenize", {"prompt": text, "add_special_tokens": False})
    assert status == 200
    return json.loads(body)["tokens"]


def expected_score(server: Server, context: str, continuation: str) -> tuple[float, bool]:
    """The continuation's log-likelihood and whether it is the greedy one, from llama.cpp's logits, for the
    tokens lm-eval sends (its split: the context's trailing spaces go to the continuation)."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    context_tokens = tokenize(server, context)
    continuation_tokens = tokenize(server, context + continuation)[len(context_tokens):]
    tokens = context_tokens + continuation_tokens
    rows = reference_logprobs(Path(server.process.args[4]), tokens, server.flash_attention)  # type: ignore[index]
    at = range(len(context_tokens) - 1, len(tokens) - 1)
    score = sum(float(rows[i][tokens[i + 1]]) for i in at)
    return score, all(int(rows[i].argmax()) == tokens[i + 1] for i in at)


@pytest.mark.parametrize("batch", ["1", "4"])
def test_multiple_choice_scores_are_the_models(random_server: Server, tasks: Path, tmp_path: Path, batch: str) -> None:
    samples = lm_eval(random_server, tasks, tmp_path, "local-completions", "glm4_local_mc", "--batch_size", batch)
    assert len(samples) == len(QUESTIONS)
    for sample in samples:
        for (score, greedy), arguments in zip([r[0] for r in sample["resps"]], sample["arguments"].values(),
                                              strict=True):
            expected, expected_greedy = expected_score(random_server, arguments["arg_0"], arguments["arg_1"])
            assert float(score) == pytest.approx(expected, abs=1e-2)
            assert (greedy == "True") == expected_greedy
        best = max(range(3), key=lambda i: float(sample["resps"][i][0][0]))
        assert sample["acc"] == float(best == sample["doc"]["answer"])


def test_generation_through_completions_and_chat_is_what_the_server_answers(random_server: Server, tasks: Path,
                                                                          tmp_path: Path) -> None:
    client = random_server.client()
    raw = lm_eval(random_server, tasks, tmp_path / "raw", "local-completions", "glm4_local_gen", "--batch_size", "2")
    for sample in raw:
        prompt = sample["arguments"]["gen_args_0"]["arg_0"]
        asked = client.completions.create(model="tiny", prompt=tokenize(random_server, prompt), max_tokens=6,
                                          temperature=0, stop=["\n", "<|endoftext|>"])
        assert sample["resps"][0][0] == asked.choices[0].text
    chat = lm_eval(random_server, tasks, tmp_path / "chat", "local-chat-completions", "glm4_local_gen",
                   "--apply_chat_template")
    for sample in chat:
        [messages] = sample["arguments"]["gen_args_0"]["arg_0"]  # the messages lm-eval sent, as JSON
        prompt = json.loads(messages)
        asked = client.chat.completions.create(model="tiny", messages=prompt, max_tokens=6, temperature=0,
                                               stop=["\n"])
        assert sample["resps"][0][0] == asked.choices[0].message.content
