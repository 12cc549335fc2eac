"""Code inputs read from the imports: complete, narrowed by modality, and the schema where config is read."""

from __future__ import annotations

from pathlib import Path

from mmhealth.core.code_inputs import SCRIPTS, code_files, imported_modules, modality_of

MM = SCRIPTS / "mmhealth"


def names(files: list[str]) -> set[str]:
    return {str(Path(f).relative_to(SCRIPTS.parent)) for f in files}


def test_entry_first_then_every_module_it_reaches():
    files = code_files(SCRIPTS / "finetune.py")
    assert files[0] == str(SCRIPTS / "finetune.py")
    got = names(files)
    # finetune -> train.finetune -> train.loop -> predict.inference -> train.device: a chain of imports
    for module in ("train/finetune.py", "train/loop.py", "predict/inference.py", "train/device.py",
                   "train/bags.py", "core/special_tokens.py", "train/dna_augment.py", "tokenize/dna_kmers.py"):
        assert f"scripts/mmhealth/{module}" in got, module
    assert "workflow/schemas/config.schema.yaml" in got  # core.config reads the schema at run time
    assert "scripts/mmhealth/report/task_page.py" not in got


def test_modality_modules_are_listed_only_for_their_modality():
    image_only = names(code_files(SCRIPTS / "finetune.py", ["image"]))
    assert not {"scripts/mmhealth/train/dna_augment.py", "scripts/mmhealth/tokenize/dna_kmers.py"} & image_only
    text = names(code_files(SCRIPTS / "tokenize_modality.py", ["text"]))
    assert "scripts/mmhealth/tokenize/text.py" in text
    assert not {"scripts/mmhealth/tokenize/dna.py", "scripts/mmhealth/tokenize/ehr.py",
                "scripts/mmhealth/tokenize/image.py"} & text
    assert modality_of("mmhealth.ingest.ehr_scrub") == "ehr" and modality_of("mmhealth.train.loop") is None


def test_from_imports_of_submodules_are_followed():
    found = imported_modules(SCRIPTS / "tokenize_modality.py")
    assert {"mmhealth.tokenize.dna", "mmhealth.tokenize.text", "mmhealth.tokenize.common"} <= set(found)
