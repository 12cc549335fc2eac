# mmhealth: raw hospital exports -> tokenised Parquet shards -> fine-tuned transformers -> evaluation reports.
from snakemake.utils import min_version

min_version("9.0")


# The bundled demo configuration applies only without --configfile: a user's file replaces it whole,
# so demo tasks never leak into a run on real data.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/paths.smk"
include: "workflow/rules/code.smk"
include: "workflow/rules/inputs.smk"
include: "workflow/rules/accounting.smk"
include: "workflow/rules/ingest.smk"
include: "workflow/rules/split.smk"
include: "workflow/rules/tokenize.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/predict.smk"


rule all:
    default_target: True
    input:
        all_outputs("report"),
        predict_outputs(),
