# One subject-level split shared by every modality and task; task labels mapped onto pseudonyms.


rule subject_split:
    input:
        parts=ingested_parts,
        code=stage_code("split"),
    output:
        subjects_table(),
    params:
        fractions=split_fractions_json,
    log:
        log_path("split", "subjects"),
    conda:
        stage_env("split")
    threads: 1
    resources:
        mem_mb=mem_mb(2000),
        runtime=runtime_min(10),
    shell:
        "python {input.code[0]:q} --parts {input.parts:q} --fractions {params.fractions:q}"
        " --out {output:q} > {log:q} 2>&1"


rule task_labels:
    input:
        labels=labels_file,
        subjects=subjects_table(),
        code=stage_code("labels"),
    output:
        task_labels("{task}"),
    params:
        salt=config["privacy"]["salt_file"],
        modalities=task_modalities_csv,
    log:
        log_path("split", "labels", "{task}"),
    conda:
        stage_env("labels")
    threads: 1
    resources:
        mem_mb=mem_mb(1000),
        runtime=runtime_min(10),
    shell:
        "python {input.code[0]:q} --labels {input.labels:q} --subjects {input.subjects:q}"
        " --salt-file {params.salt:q} --modalities {params.modalities} --out {output:q} > {log:q} 2>&1"


rule split:
    localrule: True
    input:
        all_outputs("split"),
