"""The stage parameter models: conf/base validates, and a bad value names its YAML key."""

from __future__ import annotations

import pytest
from pydantic import BaseModel
from support.params import base_parameters, stage_params

from plants_mlops import params as P
from plants_mlops.errors import UserFacingError


@pytest.mark.parametrize("stage", sorted(P.STAGES))
def test_every_stage_block_of_conf_base_validates(stage):
    parsed = P.parse(P.STAGES[stage], stage_params(stage), stage)
    assert isinstance(parsed, P.STAGES[stage])


def test_every_parameter_block_in_conf_base_has_a_model():
    assert set(base_parameters()) == set(P.STAGES)


def _no_defaults(model: type[BaseModel], path: str) -> list[str]:
    found = []
    for name, field in model.model_fields.items():
        if not field.is_required():
            found.append(f"{path}.{name}")
        for arg in (field.annotation, *getattr(field.annotation, "__args__", ())):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                found += _no_defaults(arg, f"{path}.{name}")
            for inner in getattr(arg, "__args__", ()):
                if isinstance(inner, type) and issubclass(inner, BaseModel):
                    found += _no_defaults(inner, f"{path}.{name}")
    return found


@pytest.mark.parametrize("stage", sorted(P.STAGES))
def test_yaml_is_the_only_place_a_default_lives(stage):
    # No field of a model has a default, so a validating conf/base sets every one of them.
    assert _no_defaults(P.STAGES[stage], stage) == []


def test_a_wrong_type_names_the_yaml_key_path_in_one_line():
    bad = stage_params("training", optimizer={"lr": "fast"})
    with pytest.raises(UserFacingError) as err:
        P.parse(P.TrainingParams, bad, "training")
    assert str(err.value) == (
        "params:training.optimizer.lr: Input should be a valid number, got 'fast' "
        "(conf/base/parameters_training.yml)"
    )


def test_an_unknown_key_is_an_error_naming_it():
    bad = stage_params("formatting", split={"tets": 0.15})
    with pytest.raises(UserFacingError) as err:
        P.parse(P.FormattingParams, bad, "formatting")
    assert str(err.value) == (
        "params:formatting.split.tets: unknown parameter (a typo?) "
        "(conf/base/parameters_formatting.yml)"
    )


def test_a_missing_key_and_each_other_problem_get_a_line_each():
    bad = stage_params("validation", max_missing_rate="half")
    del bad["min_source_side"]
    with pytest.raises(UserFacingError) as err:
        P.parse(P.ValidationParams, bad, "validation")
    lines = str(err.value).splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("params:validation.max_missing_rate: Input should be")
    assert lines[1].startswith("params:validation.min_source_side: missing")


def test_a_sub_block_is_named_from_its_stage():
    with pytest.raises(UserFacingError, match=r"^params:evaluation\.subset\.seed: .*"):
        P.parse(
            P.EvaluationSubset, {"max_images_per_split": None, "seed": "x"}, "evaluation.subset"
        )


def test_null_num_workers_means_none_on_cpu_and_four_on_cuda():
    train = P.parse(P.TrainingParams, stage_params("training"), "training")
    assert train.num_workers is None
    assert (train.loader_workers(cuda=False), train.loader_workers(cuda=True)) == (0, 4)
    two = P.parse(P.TrainingParams, stage_params("training", num_workers=2), "training")
    assert two.loader_workers(cuda=True) == 2


def test_the_retrain_switch_from_the_environment_is_a_boolean():
    parsed = P.parse(
        P.MonitoringParams, stage_params("monitoring", retrain={"enabled": "true"}), "monitoring"
    )
    assert parsed.retrain.enabled is True
