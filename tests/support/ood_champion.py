"""The product's model with its OOD detector, registered as a champion.

The tiny CNN of ``champion.py`` knows nothing: only a real backbone tells a cat from a
lawn. This trains the default recipe (EfficientNet-Lite0 ImageNet weights, frozen, the
linear probe, 160 px) with the training nodes on a small sample set, appends the OOD
detector fitted on its training split (``attach_ood_detector``), logs it as training does
(``model/artifact.log_serving_model``) and makes it the champion. Float serving: the
int8 choice is not what these tests are about and costs its calibration time.
"""

from __future__ import annotations

from dataclasses import dataclass

from plants_mlops import contracts
from support import model_data
from support.params import stage_params


@dataclass(frozen=True)
class OODChampion:
    version: str
    meta: dict


def trained_with_ood(data: model_data.ModelData) -> tuple[bytes, dict]:
    """(serving ONNX with ``ood_score``, serving meta with ``ood``) of the default recipe."""
    from plants_mlops.pipelines.training import nodes

    params = stage_params(
        "training",
        quiet=True,
        mlflow={"enabled": False},
        serving_precision={"mode": "fp32"},
    )
    checkpoint, history = nodes.train_model(
        data.dataset_index, data.fmt_images, params, data.dataset_fingerprint
    )
    onnx = nodes.export_serving_model(checkpoint, params)
    served, ood = nodes.attach_ood_detector(
        onnx, history, data.dataset_index, data.fmt_images, params
    )
    meta = nodes._serving_meta(history, precision="fp32", ood=ood)
    return served, meta.to_dict()


def register_ood_champion(tracking_uri: str, name: str, data: model_data.ModelData) -> OODChampion:
    from plants_mlops.model import artifact, registry, tracking

    onnx, meta = trained_with_ood(data)
    cl = tracking.client(tracking_uri)
    run = cl.create_run(tracking.experiment_id(cl, "ood-tests"))
    meta = {**meta, "mlflow_run_id": run.info.run_id}
    logged = artifact.log_serving_model(cl, run.info.run_id, onnx, meta)
    cl.set_terminated(run.info.run_id, "FINISHED")
    version = registry.register_version(cl, logged, {"verdict": "pass"}, name)
    registry.move_alias(
        cl, contracts.ALIAS_CHAMPION, version, action="test", reason="test setup", name=name
    )
    return OODChampion(version, meta)
