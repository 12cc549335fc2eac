# Pages people read: one per task, drawn from evaluation's files, and one summary over all tasks; and the
# data accounting they show. The pages are report() outputs, so `snakemake --report report.zip` packages
# them with their captions.

report: "../report/workflow.rst"


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
        page=report(eval_file("{task}", "report.html"), caption="../report/task.rst", category="Tasks",
               subcategory="{task}", labels={"task": "{task}", "page": "evaluation"}),
        card_json=eval_file("{task}", "model_card.json"),
        card_md=eval_file("{task}", "model_card.md"),
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
        " --training-log {params.training_log:q} --labels {input.labels:q} --manifests {input.manifests:q}"
        " --model-dir {input.model:q} --out {output.page:q} --out-card-json {output.card_json:q}"
        " --out-card-md {output.card_md:q} --accounting {input.accounting:q} > {log:q} 2>&1"




rule summary_report:
    input:
        metrics=task_metrics(),
        accounting=accounting_file(),
        code=entry_code("summary_report"),
    output:
        report(summary_report(), caption="../report/summary.rst", category="Summary",
               labels={"page": "all tasks"}),
    log:
        log_path("report", "summary"),
    conda:
        entry_env("summary_report")
    threads: 1
    resources:
        mem_mb=mem_mb(1000),
        runtime=runtime_min(10),
    shell:
        "python {input.code[0]:q} --metrics {input.metrics:q} --accounting {input.accounting:q} --out {output:q}"
        " > {log:q} 2>&1"


rule report:
    localrule: True
    input:
        all_outputs("report"),
