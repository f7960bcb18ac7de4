"""The character language model: training, bits per character, generation, gates, and bad text input."""

import math

import pytest
import torch

from longshort.charmodel import CharModel, TextConfig, mean_bits, train_char_model, unigram_bits
from longshort.cli import main
from longshort.datasets import kjv_text, read_text_file
from longshort.gate_plots import trace_gates

PATTERN = "abcd" * 150  # 600 characters an LSTM learns to continue exactly


def quiet(_: str) -> None:
    pass


@pytest.fixture(scope="module")
def pattern_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("pattern") / "pattern.txt"
    path.write_text(PATTERN)
    config = TextConfig(seq_len=12, embedding=4, units=16, epochs=30, patience=0, batch_size=16, learning_rate=0.02)
    return train_char_model(config, path, None, progress=False, echo=quiet)


def test_it_learns_a_pattern_far_below_the_unigram_baseline(pattern_model):
    report = pattern_model.report
    assert report["unigram_bits_per_char"] == pytest.approx(2.0, abs=0.02)  # four equally frequent characters
    assert report["bits_per_char"] < 0.2
    assert pattern_model.vocabulary == "abcd"
    assert pattern_model.generate("abc", 9, temperature=0) == "dabcdabcd"


def test_sampling_is_repeatable_with_a_seed_and_checks_its_arguments(pattern_model):
    first = pattern_model.generate("a", 40, temperature=1.5, seed=3)
    assert first == pattern_model.generate("a", 40, temperature=1.5, seed=3) and len(first) == 40
    with pytest.raises(ValueError, match="never seen the characters 'x', 'z'"):
        pattern_model.generate("abzx", 5)
    with pytest.raises(ValueError, match="--temperature must be >= 0"):
        pattern_model.generate("a", 5, temperature=-1)


def test_bits_per_char_carries_the_state_across_chunks(pattern_model):
    codes = pattern_model.encode("abcdabcdab" * 7)
    with torch.no_grad():
        chunked = mean_bits(pattern_model.network, codes, seq_len=5, streams=1)
        whole = mean_bits(pattern_model.network, codes, seq_len=1000, streams=1)
        scores, _ = pattern_model.network(codes[None, :-1])  # (1, T, V)
        direct = torch.nn.functional.cross_entropy(scores[0], codes[1:]) / math.log(2)
    assert chunked == pytest.approx(whole, rel=1e-5) == pytest.approx(float(direct), rel=1e-5)


def test_unigram_bits():
    assert unigram_bits("aaab", "a") == pytest.approx(-math.log2(4 / 6))


def test_trace_gates_replays_the_lstm(pattern_model):
    x = pattern_model.embed("abcdab")  # (1, 6, 4)
    gates = trace_gates(pattern_model.network.lstm.cell, x[0])
    assert set(gates) == {"i", "f", "g", "o", "c", "h"} and gates["h"].shape == (6, 16)
    with torch.no_grad():
        outputs, _, _ = pattern_model.network.lstm(x)  # (1, 6, 16)
    assert torch.allclose(gates["h"], outputs[0], atol=1e-5)
    assert float(gates["f"].min()) >= 0 and float(gates["f"].max()) <= 1


def test_cli_train_generate_gates(tmp_path, capsys):
    book = tmp_path / "book.txt"
    book.write_text("the cat sat on the mat. " * 40)
    out = tmp_path / "run"
    args = ["train", str(book), "--text", "--out", str(out), "--seq_len=16", "--units=8", "--epochs=2", "--no-progress"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "Bits per character on the held-out text" in printed and "character frequencies only (unigram)" in printed
    assert "864 characters to train on, the last 96 held out" in printed
    assert (out / "checkpoint.pt").is_file() and (out / "learning_curves.png").stat().st_size > 1000

    assert main(["generate", str(out), "--prompt", "the ", "--length", "30", "--seed", "1"]) == 0
    generated = capsys.readouterr().out
    assert generated.startswith("the ") and len(generated.rstrip("\n")) == 34
    assert main(["generate", str(out / "checkpoint.pt"), "--prompt", "THE", "--length", "5"]) == 2
    err = capsys.readouterr().err
    assert "never seen the characters 'E', 'H', 'T'" in err and "Traceback" not in err

    assert main(["gates", str(out), "the mat"]) == 0
    assert capsys.readouterr().out.startswith("Reading the text 'the mat' itself (there is no file of that name).\n")
    assert (out / "gates.png").stat().st_size > 10_000
    assert main(["gates", str(out), str(book), "--range", "4:30", "--plot", str(tmp_path / "g.png")]) == 0
    assert (tmp_path / "g.png").stat().st_size > 10_000
    capsys.readouterr()

    loaded = CharModel.load(out)
    assert loaded.vocabulary == "".join(sorted(set(book.read_text())))
    assert loaded.report["epochs"] == 2


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "is empty"),
        (b" \n\n\t ", "is empty (only whitespace)"),
        (b"PK\x03\x04\x00\x00binary", "looks binary (it has NUL bytes)"),
        (b"caf\xe9 latin-1", "is not UTF-8 text: the byte 0xe9 at offset 3"),
    ],
)
def test_unusable_text_files(tmp_path, capsys, content, message):
    path = tmp_path / "book.txt"
    path.write_bytes(content)
    assert main(["train", str(path), "--text", "--no-progress", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("longshort train: ") and message in err and "Traceback" not in err


def test_missing_folder_and_short_text(tmp_path, capsys):
    assert main(["train", str(tmp_path / "none.txt"), "--text"]) == 2
    assert "no such file" in capsys.readouterr().err
    with pytest.raises(ValueError, match="is a folder"):
        read_text_file(tmp_path)
    short = tmp_path / "short.txt"
    short.write_text("only a few words")
    assert main(["train", str(short), "--text", "--out", str(tmp_path / "run")]) == 2
    assert "has 16 characters: too few for --seq_len=100" in capsys.readouterr().err


def test_series_checkpoint_cannot_generate(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path), "--units=2", "--epochs=1", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["generate", str(tmp_path)]) == 2
    assert "holds a time-series forecaster; this needs a character language model" in capsys.readouterr().err


def test_bundled_text_is_public_domain_kjv_without_its_header():
    text = kjv_text()
    assert text.startswith("Genesis\n\n1:1 In the beginning God created the heaven and the earth.\n")
    assert "# " not in text[:200] and 350_000 < len(text) < 400_000 and "Exodus\n" in text
