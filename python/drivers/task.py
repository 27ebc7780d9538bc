"""The embedded verifiable task: multi-digit addition with a character-level tokenizer.

DESIGN.md "Drivers": "a synthetic verifiable task (e.g. multi-digit arithmetic with
exact-answer reward)". A problem is ``"37+485="`` and its gold answer ``"522"``; the reward
is 1 for an exact answer and 0 otherwise (the verifiable reward of RLVR). The difficulty
knob is the number of digits per operand. The evaluation set is a fixed, seeded sample that
the training stream never draws (held out).

Tokenizers are reached through the small :class:`Codec` protocol so that the drivers run
the same way with :class:`CharTokenizer` (the embedded default) and with a Hugging Face
tokenizer (:class:`paramgeom.drivers.models.HFCodec`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

__all__ = [
    "ArithmeticTask",
    "CharTokenizer",
    "Codec",
    "Problem",
    "TOKENIZER_FILE",
    "exact_reward",
    "rewards",
]

# Name of the char tokenizer's file inside a model folder. A folder holding it is read with
# CharTokenizer; any other folder with the Hugging Face tokenizer files in it.
TOKENIZER_FILE = "paramgeom_tokenizer.json"


class Codec(Protocol):
    """What the drivers need of a tokenizer: ids for prompts and completions, and text back."""

    @property
    def vocab_size(self) -> int: ...
    @property
    def pad_id(self) -> int: ...
    @property
    def eos_id(self) -> int: ...
    def prompt_ids(self, text: str) -> list[int]: ...
    def completion_ids(self, text: str) -> list[int]: ...
    def decode(self, ids: list[int]) -> str: ...
    def fingerprint(self) -> str: ...
    def save(self, folder: Path) -> None: ...


class CharTokenizer:
    """One token per character of ``alphabet`` plus ``<pad>`` (0), ``<bos>`` (1), ``<eos>`` (2).

    The default alphabet ``"0123456789+="`` gives a vocabulary of 15. Prompts start with
    ``<bos>``; completions end with ``<eos>``.
    """

    SPECIALS = ("<pad>", "<bos>", "<eos>")

    def __init__(self, alphabet: str = "0123456789+=") -> None:
        if len(set(alphabet)) != len(alphabet) or not alphabet:
            raise ValueError(f"alphabet must be non-empty with distinct characters: {alphabet!r}")
        self.alphabet = alphabet
        self._ids = {c: i + len(self.SPECIALS) for i, c in enumerate(alphabet)}

    @property
    def vocab_size(self) -> int:
        return len(self.SPECIALS) + len(self.alphabet)

    @property
    def pad_id(self) -> int:
        return 0

    @property
    def bos_id(self) -> int:
        return 1

    @property
    def eos_id(self) -> int:
        return 2

    def encode(self, text: str) -> list[int]:
        """Ids of ``text``, one per character; a character outside the alphabet is an error."""
        try:
            return [self._ids[c] for c in text]
        except KeyError as exc:
            raise ValueError(
                f"character {exc.args[0]!r} is not in the alphabet {self.alphabet!r}"
            ) from None

    def prompt_ids(self, text: str) -> list[int]:
        return [self.bos_id, *self.encode(text)]

    def completion_ids(self, text: str) -> list[int]:
        return [*self.encode(text), self.eos_id]

    def decode(self, ids: list[int]) -> str:
        """Text of ``ids``; special tokens are dropped."""
        n = len(self.SPECIALS)
        return "".join(self.alphabet[i - n] for i in ids if n <= i < self.vocab_size)

    def fingerprint(self) -> str:
        """Identity of the id mapping: two codecs with equal fingerprints agree on every id."""
        return "char:" + hashlib.sha256(self.alphabet.encode()).hexdigest()[:16]

    def save(self, folder: Path) -> None:
        data = {"type": "char", "alphabet": self.alphabet, "specials": list(self.SPECIALS)}
        (Path(folder) / TOKENIZER_FILE).write_text(json.dumps(data, indent=1) + "\n")

    @classmethod
    def load(cls, folder: Path) -> CharTokenizer:
        data = json.loads((Path(folder) / TOKENIZER_FILE).read_text())
        if data.get("type") != "char" or data.get("specials") != list(cls.SPECIALS):
            raise ValueError(f"{Path(folder) / TOKENIZER_FILE}: not a paramgeom char tokenizer")
        return cls(data["alphabet"])


@dataclass(frozen=True)
class Problem:
    """One addition problem: ``prompt`` is ``"a+b="``, ``answer`` the decimal sum."""

    a: int
    b: int

    @property
    def prompt(self) -> str:
        return f"{self.a}+{self.b}="

    @property
    def answer(self) -> str:
        return str(self.a + self.b)


@dataclass(frozen=True)
class ArithmeticTask:
    """Addition of two operands drawn uniformly from ``[0, 10**digits)``.

    Parameters
    ----------
    digits : int
        The difficulty knob: digits per operand (1 to 18). The answer has at most
        ``digits + 1`` characters, so ``max_new_tokens = digits + 2`` leaves room for ``<eos>``.
    eval_size : int
        Number of held-out problems (distinct pairs; never drawn by :meth:`sample`).
    eval_seed : int
        Seed of the held-out set, independent of any training seed so every run of a task
        is evaluated on the same problems.
    """

    digits: int = 3
    eval_size: int = 512
    eval_seed: int = 20_260_607

    def __post_init__(self) -> None:
        if not 1 <= self.digits <= 18:
            raise ValueError(f"digits must be in 1..18, got {self.digits}")
        if self.eval_size < 1:
            raise ValueError(f"eval_size must be >= 1, got {self.eval_size}")
        # Half the pair space at most, so the training stream keeps most problems.
        if self.eval_size > self.num_pairs // 2:
            raise ValueError(
                f"eval_size {self.eval_size} is more than half of the {self.num_pairs} "
                f"problems with {self.digits} digit(s)"
            )

    @property
    def num_pairs(self) -> int:
        return (10**self.digits) ** 2

    @property
    def max_new_tokens(self) -> int:
        """Answer characters plus ``<eos>``."""
        return self.digits + 2

    def config(self) -> dict:
        return {"task": "addition", "digits": self.digits, "eval_size": self.eval_size,
                "eval_seed": self.eval_seed}  # fmt: skip

    def _draw(self, n: int, gen: torch.Generator) -> list[Problem]:
        hi = 10**self.digits
        # int64 is enough: operands < 1e18.
        ab = torch.randint(0, hi, (n, 2), generator=gen, dtype=torch.int64).tolist()
        return [Problem(a, b) for a, b in ab]

    def eval_set(self) -> list[Problem]:
        """The held-out problems: ``eval_size`` distinct pairs from ``eval_seed``."""
        gen = torch.Generator().manual_seed(self.eval_seed)
        seen: dict[Problem, None] = {}
        while len(seen) < self.eval_size:
            for p in self._draw(self.eval_size, gen):
                seen.setdefault(p)
                if len(seen) == self.eval_size:
                    break
        return list(seen)

    def sample(self, n: int, gen: torch.Generator) -> list[Problem]:
        """``n`` training problems from ``gen``, redrawing any that is in the held-out set."""
        held = self._held_out()
        out: list[Problem] = []
        while len(out) < n:
            out.extend(p for p in self._draw(n - len(out), gen) if p not in held)
        return out

    def _held_out(self) -> frozenset[Problem]:
        cached = self.__dict__.get("_held")
        if cached is None:
            cached = frozenset(self.eval_set())
            # Frozen dataclass: cache through __dict__ (the set is derived, not state).
            object.__setattr__(self, "_held", cached)
        return cached


def exact_reward(completion: str, answer: str) -> float:
    """The verifiable reward: 1.0 when the completion, stripped of surrounding whitespace,
    equals the gold answer exactly, else 0.0 (arXiv 2606.07082's RLVR uses such a
    verifier). The completion is the decoded text up to ``<eos>``."""
    return 1.0 if completion.strip() == answer else 0.0


def rewards(completions: list[str], answers: list[str]) -> torch.Tensor:
    """:func:`exact_reward` of each pair as a float32 tensor of shape ``(len(answers),)``."""
    if len(completions) != len(answers):
        raise ValueError(f"{len(completions)} completions for {len(answers)} answers")
    return torch.tensor([exact_reward(c, a) for c, a in zip(completions, answers, strict=True)])
