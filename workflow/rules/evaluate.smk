# Test-split evaluation per task: metrics with bootstrap CIs, a baseline, predictions and a report.


rule evaluate_task:
    input:
        unpack(evaluate_inputs),
    output:
        metrics=eval_file("{task}", "metrics.json"),
        predictions=eval_file("{task}", "predictions.parquet"),
        report=eval_file("{task}", "report.html"),
    params:
        modalities=task_modalities_csv,
        tokens_root=tokens_root_of,
        bootstrap=config["evaluate"]["bootstrap"],
        seed=config["evaluate"]["seed"],
        out_dir=folder_of_metrics,
    log:
        log_path("evaluate", "{task}"),
    benchmark:
        benchmark_path("evaluate", "{task}")
    conda:
        stage_env("evaluate")
    threads: 1
    resources:
        mem_mb=mem_mb(4000),
        runtime=runtime_min(60),
    shell:
        "python {input.code[0]:q} --task {wildcards.task} --modalities {params.modalities}"
        " --model-dir {input.model:q} --tokens-root {params.tokens_root:q} --labels {input.labels:q}"
        " --ehr-parts {input.ehr:q} --bootstrap {params.bootstrap} --seed {params.seed}"
        " --threads {threads} --out-dir {params.out_dir:q} > {log:q} 2>&1"


rule evaluate:
    localrule: True
    input:
        all_outputs("evaluate"),
