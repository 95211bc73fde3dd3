"""Writes the general chat prompts the demo twig is self-distilled on (the twig's chat mixture).

Text-only instructions from topic x template, as LLaVA instruction JSON with empty answers:
`twigvlm distill` fills the answers with the base model's own greedy generations. Train and eval
prompts use disjoint topics. Deterministic; rerun with `python3 xtask/data/make_chat_prompts.py`.
"""
import json
import pathlib

TRAIN_TOPICS = [
    "the water cycle", "photosynthesis", "the moon", "volcanoes", "honey bees", "the printing press",
    "electric cars", "recycling", "the human heart", "rainbows", "coffee", "the Roman Empire",
    "penguins", "solar panels", "the internet", "chess", "bread making", "earthquakes",
    "the Olympic Games", "vaccines", "desert plants", "trains", "music theory", "clouds",
]
EVAL_TOPICS = ["tides", "octopuses", "wind turbines", "glaciers", "the piano", "tea"]
TEMPLATES = [
    "Explain {topic} in simple terms.",
    "Write a short paragraph about {topic}.",
    "What are three interesting facts about {topic}?",
    "Describe {topic} to a ten-year-old.",
    "Why is {topic} important?",
    "Give me a brief overview of {topic}.",
]


def records(topics, split):
    return [
        {"id": f"chat-{split}-{t}-{k}", "conversations": [{"from": "human", "value": template.format(topic=topic)}, {"from": "gpt", "value": ""}]}
        for t, topic in enumerate(topics)
        for k, template in enumerate(TEMPLATES)
    ]


here = pathlib.Path(__file__).parent
for split, topics in [("train", TRAIN_TOPICS), ("eval", EVAL_TOPICS)]:
    (here / f"chat-prompts-{split}.json").write_text(json.dumps(records(topics, split), indent=1) + "\n")
