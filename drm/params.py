"""The whole params.yaml in one schema: every stage's sections together.

Stages validate only their own sections (drm/<stage>/stage.py: Params); this is for the
places that read the whole file at once: the Prefect flow checks it before any task runs,
and `python -m drm.params [params.yaml]` checks a file by hand."""
from __future__ import annotations

import sys

from pydantic import ConfigDict

from drm.base.params import SECTIONS, load, parse
from drm.describe.stage import Params as DescribeParams
from drm.diagnostics.stage import Params as DiagnosticsParams
from drm.evaluate.stage import Params as EvaluateParams
from drm.finetune.stage import Params as FinetuneParams
from drm.pretrain.stage import Params as PretrainParams
from drm.report.stage import Params as ReportParams
from drm.world.stage import Params as WorldParams
from drm.zeroshot.stage import Params as ZeroshotParams

STAGE_PARAMS = {"world": WorldParams, "pretrain": PretrainParams, "describe": DescribeParams,
                "zeroshot": ZeroshotParams, "finetune": FinetuneParams, "evaluate": EvaluateParams,
                "diagnostics": DiagnosticsParams, "report": ReportParams}


class Params(WorldParams, PretrainParams, DescribeParams, ZeroshotParams, FinetuneParams, EvaluateParams,
             DiagnosticsParams, ReportParams):
    """Every section of params.yaml (each stage's schema, merged); unknown sections fail."""

    model_config = ConfigDict(extra="forbid")


assert set(Params.model_fields) == set(SECTIONS), "drm.base.params.SECTIONS lists every section"


def parse_params(raw: dict | None) -> Params:
    return parse(raw, Params)


def load_params(path="params.yaml") -> Params:
    return load(path, Params)


if __name__ == "__main__":
    load_params(sys.argv[1] if len(sys.argv) > 1 else "params.yaml")
    print("params: valid")
