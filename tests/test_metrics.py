import math

import pytest
import torch

from lightning_edit.metrics import (EditSeconds, Fluency, LocalityAgreement, PeakMemory, PeakMemoryMonitor, ProbabilityPreference,
                                    TargetAccuracy, ngram_entropy)
from lightning_edit.models.teacher_forcing import TargetScore, score_targets


def ts(target, predicted, logprobs=None):
    target = torch.tensor(target)
    return TargetScore(target_ids=target, predicted_ids=torch.tensor(predicted),
                       token_logprobs=torch.tensor(logprobs if logprobs is not None else [0.0] * len(target)))


def test_target_accuracy_token_and_exact_by_hand():
    token, exact = TargetAccuracy("token"), TargetAccuracy("exact")
    # request 1: two prompts, 2/3 and 1/1 tokens right → token 5/6, exact 1/2
    r1 = [ts([1, 2, 3], [1, 2, 9]), ts([4], [4])]
    # request 2: one prompt, 0/2 → token 0, exact 0
    r2 = [ts([5, 6], [7, 8])]
    assert token(r1).item() == pytest.approx(5 / 6)
    assert exact(r1).item() == pytest.approx(0.5)
    token.update(r2)
    exact.update(r2)
    assert token.compute().item() == pytest.approx((5 / 6 + 0) / 2)
    assert exact.compute().item() == pytest.approx(0.25)


def test_locality_agreement_by_hand():
    pre = [ts([1, 2, 3, 4], [1, 2, 3, 4])]
    post = [ts([1, 2, 3, 4], [1, 9, 3, 4])]
    assert LocalityAgreement("token")(pre, post).item() == pytest.approx(0.75)
    assert LocalityAgreement("exact")(pre, post).item() == 0.0
    assert LocalityAgreement("exact")(pre, pre).item() == 1.0
    with pytest.raises(ValueError):
        LocalityAgreement("token").update(pre, [])


def test_probability_preference_by_hand():
    # new: mean log p = log 0.5; true: mean log p = log 0.2 → preferred; magnitude 0.3
    new = [ts([1, 2], [0, 0], [math.log(0.5), math.log(0.5)]), ts([1], [0], [math.log(0.1)])]
    true = [ts([3], [0], [math.log(0.2)]), ts([3], [0], [math.log(0.4)])]
    assert ProbabilityPreference("score")(new, true).item() == pytest.approx(0.5)
    assert ProbabilityPreference("magnitude")(new, true).item() == pytest.approx(((0.5 - 0.2) + (0.1 - 0.4)) / 2, abs=1e-6)
    assert ProbabilityPreference("magnitude")(new[:1], true[:1]).item() == pytest.approx(0.3)


def test_empty_metric_is_nan_and_bad_protocol_raises():
    assert math.isnan(TargetAccuracy().compute().item())
    with pytest.raises(ValueError, match="protocol"):
        TargetAccuracy("fuzzy")


def test_ngram_entropy_by_hand():
    # "a b a b": bigrams ab, ba, ab → p = 2/3, 1/3; trigrams aba, bab → 1/2, 1/2
    h2 = -(2 / 3 * math.log2(2 / 3) + 1 / 3 * math.log2(1 / 3))
    h3 = 1.0
    assert ngram_entropy("a b a b") == pytest.approx((2 / 3 * h2 + 4 / 3 * h3) / 2)
    assert ngram_entropy("x x x x x x") == 0.0
    fl = Fluency()
    fl.update(["a b a b", "x x x x"])
    assert fl.compute().item() == pytest.approx(ngram_entropy("a b a b") / 2)


def test_efficiency_metrics():
    sec = EditSeconds()
    for s in (3.0, 1.0, 2.0, 100.0, 2.5):
        sec.update(s)
    assert sec.compute().item() == pytest.approx(2.5)
    mem = PeakMemory()
    mem.update(10.0)
    mem.update(30.0)
    mem.update(20.0)
    assert mem.compute().item() == 30.0


@pytest.mark.parametrize("kernel_peak", [True, False], ids=["kernel-peak", "sampled"])
def test_peak_memory_monitor_sees_a_fresh_allocation(kernel_peak):
    # In a fresh process: a long test session's allocator reuses freed memory, which RSS does not show.
    import subprocess
    import sys

    code = ("import time, torch\nimport lightning_edit.metrics.memory as mm\nfrom lightning_edit.metrics import PeakMemoryMonitor\n"
            + ("" if kernel_peak else "mm._reset_peak_rss = lambda: False\n")
            + "with PeakMemoryMonitor() as m:\n    block = torch.ones(128, 2**20 // 4)\n    block.add_(1)\n    time.sleep(0.2)\n"
            "print(m.added_mb, m.peak_mb)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    added, peak = float(out[-2]), float(out[-1])
    assert 100 < added < 400 and peak >= added


def test_kernel_peak_catches_memory_freed_inside_the_block():
    """A sampler can miss a short-lived allocation; the kernel's peak counter cannot."""
    import subprocess
    import sys

    code = ("import torch\nimport lightning_edit.metrics.memory as mm\nfrom lightning_edit.metrics import PeakMemoryMonitor\n"
            "assert mm._reset_peak_rss()\n"
            "with PeakMemoryMonitor() as m:\n    block = torch.ones(128, 2**20 // 4)\n    block.add_(1)\n    del block\n"
            "print(m.added_mb)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert 100 < float(out[-1]) < 400


def test_exact_match_equals_greedy_generation(smollm2):
    """The exact protocol (all teacher-forced argmaxes hit) is what greedy decoding produces."""
    prompts = ["The mother tongue of Danielle Darrieux is", "The capital of France is", "The Eiffel Tower is located in the city of"]
    tok = smollm2.tokenizer
    for prompt in prompts:
        enc = tok(prompt, return_tensors="pt")
        out = smollm2.model.generate(**enc, max_new_tokens=3, do_sample=False, pad_token_id=tok.pad_token_id)
        greedy = tok.decode(out[0, enc["input_ids"].shape[1]:])
        first_word = greedy.split()[0]
        hit = score_targets(smollm2, [prompt], [first_word])[0]
        assert hit.exact_match == 1.0, (prompt, greedy)
        miss = score_targets(smollm2, [prompt], ["Zanzibar"])[0]
        assert miss.exact_match == 0.0
