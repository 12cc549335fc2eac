"""Task variants: declared variants merge over their task, fusion tasks get their modality ablations."""

import pytest

from mmhealth.core.config import section_values
from mmhealth.core.task_variants import ABLATION, DECLARED, MAIN, ablation_overrides, differences, task_jobs


def task(modalities, **extra):
    """A task spec with the schema's defaults filled, as the workflow holds it after validation."""
    return section_values("tasks.*", {"modalities": modalities, "labels": "l.csv", **extra})


def test_a_fusion_task_gets_leave_one_out_and_single_modality_ablations():
    jobs = task_jobs({"fused": task(["image", "dna", "ehr"]), "alone": task(["text"])})
    assert list(jobs) == ["alone", "fused", "fused~only_dna", "fused~only_ehr", "fused~only_image",
                          "fused~without_dna", "fused~without_ehr", "fused~without_image"]
    assert jobs["alone"].kind == MAIN and jobs["fused"].kind == MAIN and jobs["fused"].variant is None
    assert jobs["fused~without_dna"].spec["modalities"] == ["image", "ehr"]
    assert jobs["fused~only_ehr"].spec["modalities"] == ["ehr"]
    assert all(jobs[n].kind == ABLATION and jobs[n].task == "fused" for n in jobs if "~" in n)
    assert all(jobs[n].spec["labels"] == "l.csv" for n in jobs if n.startswith("fused"))
    assert "variants" not in jobs["fused~only_dna"].spec and "ablations" not in jobs["fused~only_dna"].spec


def test_two_modalities_make_no_duplicate_ablation():
    """Leaving one of two out is the other alone: only the only_<m> variants are trained."""
    assert ablation_overrides(["image", "dna"]) == {"only_image": {"modalities": ["image"]},
                                                    "only_dna": {"modalities": ["dna"]}}
    assert ablation_overrides(["image"]) == {}


def test_ablations_can_be_switched_off():
    assert list(task_jobs({"fused": task(["image", "dna"], ablations=False)})) == ["fused"]


def test_an_ablation_keeps_the_encoders_of_its_remaining_modalities():
    encoders = {"image": "results/models/a/encoder-image", "dna": "results/models/b/encoder-dna",
                "ehr": "results/models/c/encoder-ehr"}
    jobs = task_jobs({"fused": task(["image", "dna", "ehr"], model={"encoders": encoders})})
    assert jobs["fused~without_dna"].spec["model"]["encoders"] == {"image": encoders["image"], "ehr": encoders["ehr"]}
    assert jobs["fused~only_ehr"].spec["model"]["encoders"] == {"ehr": encoders["ehr"]}
    assert jobs["fused"].spec["model"]["encoders"] == encoders  # the task's own spec is untouched
    assert differences(jobs["fused"].spec, jobs["fused~only_ehr"].spec) == ["modalities: ehr"]


def test_a_declared_variant_overrides_only_what_it_states():
    spec = task(["image"], finetune={"lr": 1e-3, "epochs": 7}, model={"init": {"hidden_size": 64}},
                variants={"slow": {"finetune": {"lr": 1e-4}}, "small": {"model": {"init": {"hidden_size": 32}}}})
    jobs = task_jobs({"t": spec})
    assert list(jobs) == ["t", "t~slow", "t~small"]
    slow, small = jobs["t~slow"].spec, jobs["t~small"].spec
    assert slow["finetune"] == {**spec["finetune"], "lr": 1e-4} and slow["model"] == spec["model"]
    assert small["model"]["init"] == {**spec["model"]["init"], "hidden_size": 32}
    assert small["finetune"] == spec["finetune"] and jobs["t~slow"].kind == DECLARED


def test_a_declared_variant_named_like_an_ablation_refines_it():
    spec = task(["image", "dna"], finetune={"epochs": 12}, variants={"only_dna": {"finetune": {"epochs": 3}}})
    only_dna = task_jobs({"t": spec})["t~only_dna"]
    assert only_dna.kind == ABLATION and only_dna.spec["modalities"] == ["dna"]
    assert only_dna.spec["finetune"]["epochs"] == 3


def test_a_bad_variant_setting_names_the_variant():
    with pytest.raises(ValueError, match=r"tasks\.t\.variants\.fast\.finetune"):
        task_jobs({"t": task(["image"], variants={"fast": {"finetune": {"lrr": 1.0}}})})
    with pytest.raises(ValueError, match=r"tasks\.t\.variants\.fast\.finetune\.lr"):
        task_jobs({"t": task(["image"], variants={"fast": {"finetune": {"lr": -1.0}}})})


def test_ablation_finetune_applies_to_the_generated_ablations_only():
    spec = task(["image", "dna"], finetune={"epochs": 12, "lr": 1e-3}, ablation_finetune={"epochs": 4},
                variants={"slow": {"finetune": {"lr": 1e-4}}, "only_dna": {"finetune": {"epochs": 2}}})
    jobs = task_jobs({"t": spec})
    assert jobs["t"].spec["finetune"]["epochs"] == 12 and "ablation_finetune" not in jobs["t~only_image"].spec
    assert jobs["t~only_image"].spec["finetune"]["epochs"] == 4 and jobs["t~only_image"].spec["finetune"]["lr"] == 1e-3
    assert jobs["t~only_dna"].spec["finetune"]["epochs"] == 2  # the declared refinement wins
    assert jobs["t~slow"].spec["finetune"]["epochs"] == 12

    assert differences(spec, jobs["t~only_image"].spec) == ["finetune.epochs: 4", "modalities: image"]
    assert differences(spec, jobs["t~slow"].spec) == ["finetune.lr: 0.0001"]
