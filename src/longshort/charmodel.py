"""A character-level LSTM language model: `longshort train book.txt --text`.

Data. A UTF-8 text file (an empty, binary or non-UTF-8 file is refused with a message).
The vocabulary is every character of the text. The last `validation_fraction` of the text
is held out: the model never trains on it, and its bits per character there are the report
(and decide early stopping).

Model. `Embedding(vocabulary, embedding) -> LSTM(units, return_sequences) -> Dense(vocabulary)`:
at every position, scores for the next character. Training cuts the text into sequences of
`seq_len` characters (a new random offset every epoch) and backpropagates through each
sequence only (truncated BPTT by chunks); the loss is the cross-entropy in bits per
character. Evaluation and generation carry the state from one chunk to the next.

Generation feeds a prompt, then samples one character at a time from
softmax(scores / temperature): temperature 1 samples the model's own distribution, lower is
more conservative, 0 always takes the most likely character. A prompt character that is not
in the vocabulary is an error that lists them.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longshort.cells import LSTMState
from longshort.checkpoints import (
    CheckpointError,
    EpochLoop,
    TrainingState,
    checkpoint_file,
    config_from_checkpoint,
    fingerprint,
    fit,
    load_checkpoint,
    load_weights,
)
from longshort.datasets import kjv_text, read_text_file
from longshort.layers import LSTM
from longshort.training import Clip
from longshort.wrappers import Dense

DEFAULT_TEXT = "King James Bible, Genesis and Exodus (bundled: kjv_genesis_exodus.txt)"
LN2 = math.log(2.0)


@dataclass
class TextConfig:
    """Everything a character model's result depends on; each field is `--field=value` on the command line."""

    seq_len: int = 100  # characters per training sequence: backpropagation through time stops there
    embedding: int = 32  # size of each character's learned vector
    units: int = 256  # LSTM size
    epochs: int = 12  # at most this many passes over the training text
    patience: int = 2  # stop after this many epochs without fewer held-out bits per character (0: never)
    batch_size: int = 32  # sequences per step
    learning_rate: float = 3e-3
    clip_norm: float = 1.0  # global gradient-norm clipping
    validation_fraction: float = 0.1  # the end of the text, held out
    seed: int = 0
    threads: int = 1  # CPU threads for torch: 1 is fastest for small models, above all on a busy machine
    skip_nonfinite: bool = False  # a step with a NaN or infinite loss or gradient: skip it (True) or stop (NonFiniteError)

    def __post_init__(self) -> None:
        for name in ("seq_len", "embedding", "units", "epochs", "batch_size", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if not 0 < self.validation_fraction < 1:
            raise ValueError(f"--validation_fraction must lie in (0, 1), got {self.validation_fraction}")
        if self.patience < 0 or not self.learning_rate > 0 or not self.clip_norm > 0:
            raise ValueError("--patience must be >= 0, --learning_rate and --clip_norm > 0")


class CharLSTM(nn.Module):
    """Embedding -> LSTM -> Dense over the vocabulary. codes (B, T) -> scores (B, T, V), final state."""

    def __init__(self, vocabulary_size: int, embedding: int, units: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocabulary_size, embedding)
        self.lstm = LSTM(units, input_size=embedding, return_sequences=True, return_state=True)
        self.head = Dense(vocabulary_size, input_size=units)

    def forward(self, codes: Tensor, state: Optional[LSTMState] = None) -> tuple[Tensor, LSTMState]:
        outputs, h, c = self.lstm(self.embed(codes), initial_state=state)  # (B, T, H), (B, H), (B, H)
        return self.head(outputs), LSTMState(h, c)  # (B, T, V)


class CharModel:
    """A trained character language model: the network, its vocabulary and config.

    Make one with `train_char_model` or `CharModel.load(checkpoint)`; use `generate(...)`.
    """

    def __init__(
        self,
        config: TextConfig,
        vocabulary: str,
        network: CharLSTM,
        source: str = "",
        state: Optional[TrainingState] = None,
        report: Optional[dict[str, Any]] = None,
    ) -> None:
        self.config = config
        self.vocabulary = vocabulary  # the characters, sorted; a character's code is its position
        self.index = {char: code for code, char in enumerate(vocabulary)}
        self.network = network.eval()
        self.source = source
        self.state = state or TrainingState()
        self.report = report or {}

    @classmethod
    def load(cls, path: Path) -> "CharModel":
        """The model in a checkpoint (a file or an output folder), with its best weights."""
        payload = load_checkpoint(path, "text")
        config = config_from_checkpoint(TextConfig, payload, path)
        try:
            vocabulary, source = payload["data"]["vocabulary"], payload["data"]["source"]
            state = TrainingState(**payload["training"])
            if not isinstance(vocabulary, str) or not vocabulary:
                raise TypeError("the vocabulary is not a string")
        except (KeyError, TypeError) as error:
            raise CheckpointError(f"{checkpoint_file(path)} is damaged: {error}") from None
        network = CharLSTM(len(vocabulary), config.embedding, config.units)
        load_weights(network, state.best_weights or payload["model"], path)
        return cls(config, vocabulary, network, source, state, payload.get("report"))

    def encode(self, text: str) -> Tensor:
        """Character codes (len(text),) int64; a ValueError lists characters outside the vocabulary."""
        unknown = sorted(set(text) - set(self.index))
        if unknown:
            raise ValueError(
                f"the model has never seen the characters {', '.join(map(repr, unknown))}; "
                f"it knows: {''.join(self.vocabulary)!r}"
            )
        return torch.tensor([self.index[char] for char in text], dtype=torch.long)

    def decode(self, codes: Tensor) -> str:
        return "".join(self.vocabulary[code] for code in codes.tolist())

    def bits_per_char(self, text: str) -> float:
        """The model's mean cross-entropy in bits on predicting each character of `text` from those before it."""
        with torch.no_grad():
            return mean_bits(self.network, self.encode(text), self.config.seq_len, streams=1)

    def generate(self, prompt: str = "", length: int = 200, temperature: float = 1.0, seed: Optional[int] = None) -> str:
        """`length` characters sampled after `prompt` (which is not repeated in the result).

        An empty prompt starts from a line break (or the first character of the vocabulary).
        `temperature` 0 always takes the most likely character; `seed` makes sampling repeatable.
        """
        if length < 0:
            raise ValueError(f"--length must be >= 0, got {length}")
        if not temperature >= 0:
            raise ValueError(f"--temperature must be >= 0, got {temperature}")
        start = prompt or ("\n" if "\n" in self.index else self.vocabulary[0])
        codes = self.encode(start)
        generator = torch.Generator()
        if seed is None:
            generator.seed()
        else:
            generator.manual_seed(seed)
        generated = []
        with torch.no_grad():
            scores, state = self.network(codes[None])  # (1, P, V)
            for _ in range(length):
                last = scores[0, -1]  # (V,)
                if temperature == 0:
                    code = last.argmax().view(1)
                else:
                    code = torch.multinomial(torch.softmax(last.double() / temperature, dim=-1), 1, generator=generator)
                generated.append(int(code))
                scores, state = self.network(code.view(1, 1), state)
        return self.decode(torch.tensor(generated, dtype=torch.long))

    def embed(self, text: str) -> Tensor:
        """The LSTM's input for `text`: the characters' vectors (1, T, embedding)."""
        with torch.no_grad():
            return self.network.embed(self.encode(text))[None]


def mean_bits(network: CharLSTM, codes: Tensor, seq_len: int, streams: int) -> float:
    """Mean bits per character of predicting codes[1:] from what precedes each, in eval mode.

    The text is cut into `streams` consecutive pieces run side by side; each carries its
    state from one chunk of `seq_len` to the next, so every prediction sees all of its piece before it.
    """
    length = (len(codes) - 1) // streams
    if length < 1:
        raise ValueError(f"need at least {streams + 1} characters to measure bits per character, got {len(codes)}")
    inputs = codes[: streams * length].view(streams, length)  # (S, L)
    targets = codes[1 : streams * length + 1].view(streams, length)  # (S, L): the next characters
    total, state = 0.0, None
    for start in range(0, length, seq_len):
        scores, state = network(inputs[:, start : start + seq_len], state)  # (S, T, V)
        total += float(F.cross_entropy(scores.flatten(0, 1), targets[:, start : start + seq_len].flatten(), reduction="sum"))
    return total / (streams * length) / LN2


def unigram_bits(train: str, held_out: str) -> float:
    """Bits per character on `held_out` of a model that knows only how often each character occurs in `train`."""
    counts = Counter(train)
    total = len(train) + len(set(held_out) | set(train))  # add-one smoothing over the characters in play
    return -sum(math.log2((counts[char] + 1) / total) for char in held_out) / len(held_out)


def train_char_model(
    config: Optional[TextConfig] = None,
    source: Optional[Path] = None,
    out: Optional[Path] = None,
    progress: bool = True,
    fresh: bool = False,
    echo: Callable[[str], None] = print,
) -> CharModel:
    """Train a character language model on the text file `source` (default: the bundled King James text).

    With `out`, a checkpoint is written to `out/checkpoint.pt` after every epoch, and a run
    finds it there and resumes (unless `fresh`). The model's `report` holds bits per character
    on the held-out end of the text, and the unigram baseline's.
    """
    config = config or TextConfig()
    text = read_text_file(source) if source is not None else kjv_text()
    name = str(source) if source is not None else DEFAULT_TEXT
    held_out = round(len(text) * config.validation_fraction)
    train_text, validation_text = text[: len(text) - held_out], text[len(text) - held_out :]
    needed = math.ceil((config.seq_len + 1) / (1 - config.validation_fraction)) + 2
    if len(train_text) < config.seq_len + 1 or len(validation_text) < 2:
        raise ValueError(
            f"{name} has {len(text)} characters: too few for --seq_len={config.seq_len} with "
            f"{config.validation_fraction:.0%} held out (it needs at least {needed}); use a smaller --seq_len"
        )
    vocabulary = "".join(sorted(set(text)))
    torch.manual_seed(config.seed)
    network = CharLSTM(len(vocabulary), config.embedding, config.units)
    model = CharModel(config, vocabulary, network, name)
    train_codes, validation_codes = model.encode(train_text), model.encode(validation_text)
    chunks = max(1, (len(train_codes) - config.seq_len) // config.seq_len)  # sequences per epoch
    streams = max(1, min(config.batch_size, (len(validation_codes) - 1) // config.seq_len))

    def epoch_batches(generator: torch.Generator) -> list[tuple[Tensor, Tensor]]:
        slack = len(train_codes) - 1 - chunks * config.seq_len  # >= 0
        offset = int(torch.randint(min(slack, config.seq_len - 1) + 1, (1,), generator=generator))
        span = train_codes[offset : offset + chunks * config.seq_len + 1]
        inputs = span[:-1].view(chunks, config.seq_len)  # (N, T)
        targets = span[1:].view(chunks, config.seq_len)  # (N, T): each input's next character
        order = torch.randperm(chunks, generator=generator).split(config.batch_size)
        return [(inputs[batch], targets[batch]) for batch in order]

    def batch_bits(trained: nn.Module, inputs: Tensor, targets: Tensor) -> Tensor:
        scores, _ = trained(inputs)  # (B, T, V)
        return F.cross_entropy(scores.flatten(0, 1), targets.flatten()) / LN2

    loop = EpochLoop(
        model=network,
        optimizer=torch.optim.Adam(network.parameters(), lr=config.learning_rate),
        epoch_batches=epoch_batches,
        batch_loss=batch_bits,
        validation_loss=lambda: mean_bits(network, validation_codes, config.seq_len, streams),
        clip=Clip(max_norm=config.clip_norm),
        skip_nonfinite=config.skip_nonfinite,
        seed=config.seed,
        unit="char",
        items_per_sequence=config.seq_len,
    )
    data = {"source": name, "vocabulary": vocabulary, "fingerprint": fingerprint(text.encode())}

    def evaluate(state: TrainingState) -> dict[str, Any]:
        return {
            "characters": {"train": len(train_text), "held_out": len(validation_text)},
            "vocabulary_size": len(vocabulary),
            "bits_per_char": state.best_validation,
            "unigram_bits_per_char": unigram_bits(train_text, validation_text),
            "epochs": state.epoch,
            "best_epoch": state.best_epoch,
            "stopped_early": state.stopped_early,
            "seconds": round(state.seconds, 1),
        }

    description = f"training on {Path(source).name if source is not None else 'the King James text'}"
    model.state, model.report = fit(loop, "text", config, data, out, fresh, progress, description, echo, evaluate)
    return model


def format_report(model: CharModel) -> str:
    """The training summary: bits per character on the held-out text, against the unigram baseline."""
    report, config = model.report, model.config
    chars = report["characters"]
    stop = f"stopped early, best epoch {report['best_epoch']}" if report["stopped_early"] else f"best epoch {report['best_epoch']}"
    return "\n".join([
        f"Character LSTM ({config.units} units, {report['vocabulary_size']} characters) on {model.source}: "
        f"{chars['train']:,} characters to train on, the last {chars['held_out']:,} held out.",
        f"Trained {report['epochs']} epoch{'s' if report['epochs'] != 1 else ''} ({stop}) in {report['seconds']:.0f} s.",
        "",
        "Bits per character on the held-out text (lower is better):",
        f"  LSTM                                   {report['bits_per_char']:.3f}",
        f"  character frequencies only (unigram)   {report['unigram_bits_per_char']:.3f}",
    ])
