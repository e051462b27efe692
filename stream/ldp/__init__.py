"""Local differential privacy: the pure math core (mechanisms, estimators, post-processing).

Frequency oracles GRR, OUE, OLH (Wang, Blocki, Li, Jha, USENIX Security 2017);
numeric mechanisms PM and HM (Wang et al., ICDE 2019) and Duchi's (Duchi,
Jordan, Wainwright, JASA 2018), which the privatizer runs one round per report
(GRR, OUE, Duchi), with their ChaCha20 noise source (:mod:`stream.ldp.csprng`); the
two-round longitudinal mechanisms it no longer runs (:mod:`stream.ldp.longitudinal`,
kept for the benchmarks and the attack tests). No I/O here: policy, the person ledger,
the privatizer, the release buffer and aggregation live in sibling modules.
"""

from __future__ import annotations

from stream.ldp.choice import choose_oracle, make_oracle
from stream.ldp.csprng import ChaChaRandom
from stream.ldp.grr import GRR
from stream.ldp.longitudinal import LongitudinalDuchi, LongitudinalGRR, LongitudinalOUE
from stream.ldp.numeric import (
    HM_EPS_STAR,
    DuchiMechanism,
    HybridMechanism,
    NumericMechanism,
    PiecewiseMechanism,
    make_numeric,
    mean_estimate,
    mean_std_error,
)
from stream.ldp.olh import MERSENNE_P, OLH, olh_g
from stream.ldp.oracle import FrequencyOracle, secure_rng
from stream.ldp.oue import OUE
from stream.ldp.postprocess import clip_renormalize, project_simplex

__all__ = [
    "GRR",
    "HM_EPS_STAR",
    "MERSENNE_P",
    "OLH",
    "OUE",
    "ChaChaRandom",
    "DuchiMechanism",
    "FrequencyOracle",
    "HybridMechanism",
    "LongitudinalDuchi",
    "LongitudinalGRR",
    "LongitudinalOUE",
    "NumericMechanism",
    "PiecewiseMechanism",
    "choose_oracle",
    "clip_renormalize",
    "make_numeric",
    "make_oracle",
    "mean_estimate",
    "mean_std_error",
    "olh_g",
    "project_simplex",
    "secure_rng",
]
