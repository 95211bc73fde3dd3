"""How close one model's chat answers are to another's: two `twigvlm distill` outputs over the same
prompts (e.g. xtask/data/chat-replay-smollm2-eval.json, the pretrained language model's answers,
and the demo model's answers to xtask/data/chat-prompts-eval.json).

    python3 xtask/compare_chat_answers.py REFERENCE.json ANSWERS.json
"""
import json
import sys


def answers(path):
    return {r["conversations"][0]["value"]: r["conversations"][1]["value"] for r in json.load(open(path))}


def shared_word_prefix(a, b):
    wa, wb = a.split(), b.split()
    n = 0
    while n < min(len(wa), len(wb)) and wa[n] == wb[n]:
        n += 1
    return n / max(len(wa), 1)


reference, candidate = answers(sys.argv[1]), answers(sys.argv[2])
missing = [q for q in reference if q not in candidate]
if missing:
    sys.exit(f"{len(missing)} prompts have no answer in {sys.argv[2]}, e.g. {missing[0]!r}")
identical = sum(reference[q].strip() == candidate[q].strip() for q in reference)
prefix = sum(shared_word_prefix(reference[q], candidate[q]) for q in reference) / len(reference)
words = sum(len(candidate[q].split()) for q in reference) / len(reference)
print(f"{len(reference)} prompts: identical {identical}, mean shared word prefix {prefix:.1%}, mean answer {words:.1f} words")
