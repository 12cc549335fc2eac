# One page over all tasks.


rule summary_report:
    input:
        metrics=stage_outputs("evaluate"),
        code=stage_code("report"),
    output:
        summary_report(),
    log:
        log_path("report", "summary"),
    conda:
        stage_env("report")
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
