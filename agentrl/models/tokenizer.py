"""The tiny tokenizer: a 512-token byte-level BPE for the tiny random models.

It is trained deterministically on a corpus this module builds itself (instructions, arithmetic,
the env tags, web-page words, small python snippets) and committed under
``agentrl/assets/tiny_tokenizer/``. Digits are always single tokens. Byte-level means every
string round-trips through ``encode``/``decode``.

Retrain and save with ``python -m agentrl.models.tokenizer``.
"""

from __future__ import annotations

import random
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

TINY_TOKENIZER_DIR = Path(__file__).resolve().parent.parent / "assets" / "tiny_tokenizer"
VOCAB_SIZE = 512
PAD, END = "<|pad|>", "<|end|>"
ROLES = ("system", "user", "assistant", "tool")
SPECIAL_TOKENS = [PAD] + [f"<|{r}|>" for r in ROLES] + [END]

# Each message renders as <|role|>content<|end|>; the generation prompt is <|assistant|>.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant', 'tool'] %}"
    "{{ raise_exception('unknown chat role: ' + message['role']) }}"
    "{% endif %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)

_INSTRUCTIONS = [
    "Compute the value of the expression and give the answer.",
    "Use the calculator tool when you need it, then answer.",
    "You are a helpful assistant. Think step by step.",
    "Find the cheapest item and add it to the cart.",
    "Write a python function that returns the sum of a list.",
    "What is the result? Reply with the final answer only.",
    "Click the button, type the name in the search box and submit.",
    "The page shows a list of products with their price and rating.",
    "Fix the error in the code so that the tests pass.",
    "If the tool returns an error, read it and try again.",
]
_WEB_WORDS = [
    "click",
    "type",
    "price",
    "cart",
    "button",
    "link",
    "page",
    "search",
    "submit",
    "item",
    "product",
    "buy",
    "checkout",
    "total",
    "quantity",
    "name",
    "rating",
    "home",
    "back",
    "next",
    "login",
    "user",
    "email",
    "input",
    "select",
    "option",
    "menu",
    "list",
]
_CODE = [
    "def f(x):\n    return x + 1\n",
    "def add(a, b):\n    return a + b\n",
    "for i in range(10):\n    print(i)\n",
    "if x > 0:\n    y = x * 2\nelse:\n    y = -x\n",
    "import math\n\nprint(math.sqrt(16))\n",
    "class Stack:\n    def __init__(self):\n        self.items = []\n",
    "result = [n * n for n in numbers if n % 2 == 0]\n",
    "while True:\n    line = input()\n    if not line:\n        break\n",
]
_ERRORS = [
    "error: expected a number",
    "error: expected ')' at position 7",
    "error: expected <calc>...</calc> or <answer>...</answer>",
    "error: unknown element id",
    "error: division by zero",
]


def _expression(rng: random.Random, depth: int = 0) -> str:
    """A random arithmetic expression such as ``(12+7)*3-5``."""
    if depth > 2 or rng.random() < 0.35:
        return str(rng.randint(0, 120))
    left, right = _expression(rng, depth + 1), _expression(rng, depth + 1)
    expr = f"{left}{rng.choice('+-*/')}{right}"
    return f"({expr})" if rng.random() < 0.4 else expr


def build_corpus(seed: int = 0, size: int = 3000) -> list[str]:
    """The deterministic training corpus of the tiny tokenizer."""
    rng = random.Random(seed)
    corpus = list(_INSTRUCTIONS) + list(_CODE) + list(_ERRORS)
    for _ in range(size):
        expr, value = _expression(rng), rng.randint(-50, 500)
        words = " ".join(rng.choice(_WEB_WORDS) for _ in range(rng.randint(3, 9)))
        corpus += [
            f"{rng.choice(_INSTRUCTIONS)} {expr}",
            f"<calc>{expr}</calc>",
            f"<result>{value}</result>",
            f"<answer>{value}</answer>",
            f"{rng.choice(_ERRORS)}",
            f"{words} ${rng.randint(1, 999)}.{rng.randint(0, 99):02d}",
            rng.choice(_CODE),
        ]
    return corpus


def train_tiny_tokenizer(vocab_size: int = VOCAB_SIZE, seed: int = 0) -> PreTrainedTokenizerFast:
    """Train the tiny byte-level BPE from scratch and wrap it for transformers."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(build_corpus(seed), trainer=trainer)
    return wrap_tokenizer(tok)


def wrap_tokenizer(tok: Tokenizer) -> PreTrainedTokenizerFast:
    """Wrap a raw ``tokenizers.Tokenizer`` with the special tokens and the chat template."""
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=END,
        pad_token=PAD,
        additional_special_tokens=SPECIAL_TOKENS[1:-1],
        clean_up_tokenization_spaces=False,
        padding_side="left",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def load_tiny_tokenizer(path: str | Path = TINY_TOKENIZER_DIR) -> PreTrainedTokenizerFast:
    """Load the committed tiny tokenizer (left padding, pad/eos set, chat template)."""
    fast = PreTrainedTokenizerFast.from_pretrained(str(path))
    fast.padding_side = "left"
    if not fast.chat_template:
        fast.chat_template = CHAT_TEMPLATE
    return fast


def main(out: str | Path = TINY_TOKENIZER_DIR) -> None:
    """Retrain the tiny tokenizer and save it into ``out``."""
    fast = train_tiny_tokenizer()
    fast.save_pretrained(str(out))
    print(f"saved a {len(fast)}-token tokenizer to {out}")


if __name__ == "__main__":
    main()
