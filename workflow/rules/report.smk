# Pages people read: one per task, drawn from evaluation's files, and one summary over all tasks; and the
# data accounting they show (records in / out / quarantined, subjects and labels per split).


rule data_accounting:
    input:
        unpack(accounting_inputs),
    output:
        accounting_file(),
    params:
        maps=accounting_maps_json,
    log:
        log_path("report", "accounting"),
    conda:
        entry_env("data_accounting")
    threads: 1
    resources:
        mem_mb=mem_mb(1000),
        runtime=runtime_min(10),
    shell:
        "python {input.code[0]:q} --manifests-json {params.maps[manifests]:q}"
        " --quarantines-json {params.maps[quarantines]:q} --subjects {input.subjects:q}"
        " --labels-json {params.maps[labels]:q} --out {output:q} > {log:q} 2>&1"


rule task_report:
    input:
        unpack(task_report_inputs),
    output:
        eval_file("{task}", "report.html"),
    params:
        training_log=training_log_of,
    log:
        log_path("report", "{task}"),
    conda:
        entry_env("task_report")
    threads: 1
    resources:
        mem_mb=mem_mb(2000),
        runtime=runtime_min(10),
    shell:
        "python {input.code[0]:q} --task {wildcards.task} --metrics {input.metrics:q}"
        " --predictions {input.predictions:q} --baseline-predictions {input.baseline:q}"
        " --training-log {params.training_log:q} --out {output:q} > {log:q} 2>&1"




rule summary_report:
    input:
        metrics=stage_outputs("evaluate"),
        code=entry_code("summary_report"),
    output:
        summary_report(),
    log:
        log_path("report", "summary"),
    conda:
        entry_env("summary_report")
    threads: 1
    resources:
        mem_mb=mem_mb(1000),
        runtime=runtime_min(10),
    shell:
        "python {input.code[0]:q} --metrics {input.metrics:q} --out {output:q} > {log:q} 2>&1"


rule report:
    localrule: True
    input:
        all_outputs("report"),
