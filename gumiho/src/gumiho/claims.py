"""The claims and facts of ``gumiho reproduce`` (what each number means, the paper's value, the expectation)."""

from __future__ import annotations

from effrepro.reproduce import ClaimSpec, FactSpec

TAU_PAPER, SPEED_PAPER = 4.89 / 4.68, 2.97 / 2.74  # Vicuna 7B, Gumiho / EAGLE-2


def smallest_effect(paper_ratio: float) -> float:
    """The smallest ratio of interest: 1 + half the paper's gain (a ratio excluding it fails the claim)."""
    return round(1 + (paper_ratio - 1) / 2, 3)


_POOLED = ("; turns: the main evaluation's and the headline-only ones (EAGLE-2 and Gumiho alone), pooled. Fails "
           "when the whole interval lies below {x} = 1 + half the paper's gain ({paper:.3f}, Vicuna 7B), i.e. an "
           "effect half the paper's size is excluded")

CLAIMS = [
    ClaimSpec(id="tau_ratio_vs_eagle2", description="tau(Gumiho) / tau(EAGLE-2), same data, trainer settings and "
              "tree budget (tokens per target forward, pooled over the resampled turns)"
              + _POOLED.format(x=smallest_effect(TAU_PAPER), paper=TAU_PAPER), paper=round(TAU_PAPER, 3),
              unit="ratio", baseline="EAGLE-2 head trained here",
              expect=f"> 1.0, fails below {smallest_effect(TAU_PAPER)}", headline=True),
    ClaimSpec(id="speedup_ratio_vs_eagle2", description="tokens/s of Gumiho / of EAGLE-2 (paired per-turn wall "
              "times, interleaved)" + _POOLED.format(x=smallest_effect(SPEED_PAPER), paper=SPEED_PAPER),
              paper=round(SPEED_PAPER, 3), unit="ratio", baseline="EAGLE-2 head trained here",
              expect=f"> 1.0, fails below {smallest_effect(SPEED_PAPER)}", headline=True, timing=True),
    ClaimSpec(id="speedup_vs_plain", description="tokens/s of Gumiho / of plain greedy decoding", paper=2.97,
              unit="x", baseline="plain decoding, same process", expect="> 1.0", timing=True),
    ClaimSpec(id="tau_ratio_vs_medusa", description="tau(Gumiho) / tau(all-parallel Medusa-style heads)",
              paper=round(4.89 / 2.39, 3), unit="ratio", baseline="Medusa-style draft trained here", expect="> 1.0"),
    ClaimSpec(id="early_position_acceptance", description="Gumiho chain: conditional acceptance at draft position 1 "
              "minus that pooled over positions 2..depth (the early tokens the serial heads draft are the likelier "
              "ones)", paper=None, unit="probability", baseline="later draft positions", expect="> 0"),
    ClaimSpec(id="a1_vs_eagle2", description="first-position acceptance of Gumiho (2-layer serial head) minus "
              "EAGLE-2's (1 layer), chain mode", paper=None, unit="probability", baseline="EAGLE-2 chain",
              expect="> 0"),
    ClaimSpec(id="fta_tau_gain", description="tau with Full Tree Attention (official padding) / without, same draft",
              paper=None, unit="ratio", baseline="Gumiho, FTA off", expect="> 1.0"),
    ClaimSpec(id="fta_outputs_identical", description="share of turns whose greedy output with FTA on differs from "
              "plain decoding (the paper presents FTA as free; an exact count)", paper=0.0,
              unit="fraction of turns", baseline="plain greedy decoding", expect="<= 0"),
    ClaimSpec(id="lossless_fta_off", description="share of turns whose greedy output differs from plain decoding, "
              "over every FTA-off decoder (fp32; an exact count)", paper=0.0, unit="fraction of turns",
              baseline="plain greedy decoding", expect="<= 0"),
    ClaimSpec(id="ablation_serial_2_vs_1", description="tau with 2 serial steps / with 1 (6 MLP heads)", paper=None,
              unit="ratio", baseline="Gumiho with 1 serial step", expect="> 1.0"),
    ClaimSpec(id="ablation_serial_3_vs_2", description="tau with 3 serial steps / with 2 (4 MLP heads)", paper=None,
              unit="ratio", baseline="Gumiho with 2 serial steps", expect="> 1.0"),
    ClaimSpec(id="compat_fix_tau", description="tau with the corrected sibling mask, MLP pairing and FTA off / with "
              "the official ones", paper=None, unit="ratio", baseline="official sibling visibility + row pairing + FTA",
              expect=">= 1.0"),
]
FACTS = [
    FactSpec(id="serial_passes_gumiho", description="sequential draft forwards per cycle of Gumiho (context pass "
             "included; the loop of the code)", unit="passes/cycle", paper=2.0),
    FactSpec(id="serial_passes_ratio_vs_eagle2", description="Gumiho's serial draft passes per cycle / EAGLE-2's at "
             "the same number of draft levels", unit="ratio", paper=round(2 / 6, 3)),
    FactSpec(id="trainable_params_gumiho", description="trainable parameters of the Gumiho draft", unit="params"),
    FactSpec(id="train_steps_per_head", description="optimizer steps per head (same for every head)", unit="steps"),
    FactSpec(id="tau_gumiho", description="tau of Gumiho (tree, greedy, FTA off)", unit="tokens/cycle", paper=4.89,
             exact=False),
    FactSpec(id="tau_eagle2", description="tau of EAGLE-2 (tree, greedy)", unit="tokens/cycle", paper=4.68,
             exact=False),
    FactSpec(id="heldout_top1_eagle2", description="held-out top-1 agreement of the EAGLE-2 head with the target "
             "after training (draft-data holdout)", unit="fraction", exact=False),
    FactSpec(id="heldout_top1_gumiho", description="held-out top-1 agreement of Gumiho's first (serial) draft "
             "position", unit="fraction", exact=False),
    FactSpec(id="tokens_per_s_plain", description="tokens/s of plain greedy decoding in the interleaved run "
             "(details: every method's tokens/s and tree)", unit="tokens/s", exact=False),
    FactSpec(id="break_even_tau_gumiho", description="tau at which Gumiho would match plain decoding on this machine: "
             "(t_draft + t_verify) / t_step from the run's measured costs", unit="tokens/cycle", exact=False),
    FactSpec(id="cost_model_ratio_vs_eagle2", description="cost-model speedup tau * t_step / (t_draft + t_verify) of "
             "Gumiho / of EAGLE-2 (micro-benchmarked target costs)", unit="ratio", paper=round(2.97 / 2.74, 3),
             exact=False),
]
