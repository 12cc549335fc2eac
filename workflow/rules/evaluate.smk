# Test-split evaluation per task and per variant (`<task>~<variant>`, same rule): metrics with bootstrap CIs
# beside a baseline, the paired comparisons with it and with each of the task's variants,
# calibration and operating points fitted on validation, subgroups, and both sets of predictions.
# The task's page is drawn from these files by a rule of its own (report.smk), so a plot edit re-runs no
# bootstrap.


rule evaluate_task:
    input:
        unpack(evaluate_inputs),
    output:
        metrics=eval_file("{task}", "metrics.json"),
        predictions=eval_file("{task}", "predictions.parquet"),
        baseline=eval_file("{task}", "baseline_predictions.parquet"),
    params:
        modalities=task_modalities_csv,
        shards=shards_json(EVALUATE_SPLITS),
        tokenizers=tokenizers_json,
        bootstrap=config["evaluate"]["bootstrap"],
        seed=config["evaluate"]["seed"],
        variants=variants_json,
    log:
        log_path("evaluate", "{task}"),
    benchmark:
        benchmark_path("evaluate", "{task}")
    conda:
        entry_env("evaluate_task")
    threads: 1
    resources:
        mem_mb=mem_mb(4000),
        runtime=runtime_min(60),
    shell:
        "python {input.code[0]:q} --task {wildcards.task} --modalities {params.modalities}"
        " --model-dir {input.model:q} --labels {input.labels:q} --shards-json {params.shards:q}"
        " --tokenizers-json {params.tokenizers:q} --ehr-parts {input.ehr:q} --variants-json {params.variants:q}"
        " --bootstrap {params.bootstrap}"
        " --seed {params.seed} --threads {threads} --out-metrics {output.metrics:q}"
        " --out-predictions {output.predictions:q} --out-baseline-predictions {output.baseline:q} > {log:q} 2>&1"


rule evaluate:
    localrule: True
    input:
        all_outputs("evaluate"),
