"""Typed config objects: defaults and bounds come from the config schema alone, and the two cannot drift."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from mmhealth.core.config import config_problems, from_config, section_schema, section_values
from mmhealth.tokenize.dna import DnaParams
from mmhealth.tokenize.ehr import EhrParams
from mmhealth.tokenize.image import ImageParams
from mmhealth.tokenize.text import TextParams
from mmhealth.train.config import FinetuneConfig
from mmhealth.train.models import EncoderInit

TYPED = [TextParams, EhrParams, DnaParams, ImageParams, FinetuneConfig, EncoderInit]
RULE_ONLY_KEYS = {"tasks.*.finetune": {"gpus"}}  # read by the rule (the launcher), not by the job


@pytest.mark.parametrize("cls", TYPED, ids=lambda c: c.__name__)
def test_dataclass_fields_are_the_schema_keys_and_have_no_defaults(cls):
    fields = dataclasses.fields(cls)
    keys = set(section_schema(cls.SECTION)["properties"]) - RULE_ONLY_KEYS.get(cls.SECTION, set())
    assert {f.name for f in fields} == keys
    assert all(f.default is dataclasses.MISSING for f in fields), "defaults belong in the schema"
    from_config(cls)  # the schema gives every field a default


def test_defaults_come_from_the_schema_and_values_override_them():
    defaults = section_schema("tokenize.dna")["properties"]
    params = from_config(DnaParams, k=4)
    assert params.k == 4 and params.max_length == defaults["max_length"]["default"]
    assert isinstance(from_config(ImageParams, window_center=40).window_center, float)


def test_bounds_and_unknown_keys_fail_naming_the_key():
    with pytest.raises(ValueError, match=r"config key 'tokenize\.dna\.k'"):
        from_config(DnaParams, k=9)
    with pytest.raises(ValueError, match="'kmer'"):
        section_values("tokenize.dna", {"kmer": 3})
    with pytest.raises(ValueError, match=r"'tasks\.\*\.finetune\.strategy'"):
        from_config(FinetuneConfig, strategy="everything")
    with pytest.raises(ValueError, match="stride"):  # the one cross-key bound lives in the dataclass
        from_config(TextParams, max_length=16, stride=14)


def test_config_problems_name_every_key_once_with_a_suggestion(repo):
    config = yaml.safe_load((repo / "config" / "config.yaml").read_text())
    assert config_problems(config) == []
    config["shard"] = 3
    config["tasks"]["lesion_ct"]["finetune"]["epoch"] = 3
    config["tasks"]["lesion_ct"]["finetune"]["strategy"] = "ful"
    config["split"]["train"] = "most"
    assert config_problems(config) == [
        "config key 'shard': unknown key; did you mean 'shards'?",
        "config key 'split.train': 'most' is not of type 'number'",
        "config key 'tasks.lesion_ct.finetune.epoch': unknown key; did you mean 'epochs'?",
        "config key 'tasks.lesion_ct.finetune.strategy': 'ful' is not one of ['head', 'partial', 'full', 'lora'];"
        " did you mean 'full'?",
    ]
