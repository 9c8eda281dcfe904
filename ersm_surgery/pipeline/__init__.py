"""The whole story in one call: train a base, inject, fine-tune with and without masks, evaluate, export.

``run_pipeline`` is what ``ersm-surgery run`` does; ``reproduce`` adds the paper's five claims, each
with a criterion fixed before the run and a verdict.
"""
from .claims import CLAIMS, Claim, judge_claims
from .claims_v2 import CLAIMS_V2, ClaimV2, judge_claims_v2
from .run import PipelineSettings, run_pipeline

__all__ = ["CLAIMS", "Claim", "judge_claims", "CLAIMS_V2", "ClaimV2", "judge_claims_v2", "PipelineSettings",
           "run_pipeline"]
