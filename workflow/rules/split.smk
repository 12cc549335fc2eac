# One subject-level split shared by every modality and task; task labels mapped onto pseudonyms.


rule subject_split:
    input:
        parts=ingested_parts,
        splits=SPLIT_ASSIGNMENTS,
        code=entry_code("subject_split"),
    output:
        subjects_table(),
    params:
        fractions=split_fractions_json,
    log:
        log_path("split", "subjects"),
    conda:
        entry_env("subject_split")
    threads: 1
    resources:
        mem_mb=mem_mb(2000),
        runtime=runtime_min(10),
    shell:
        "python {input.code[0]:q} --parts {input.parts:q} --fractions {params.fractions:q}"
        " --split-files {input.splits:q} --out {output:q} > {log:q} 2>&1"


rule task_labels:
    input:
        labels=labels_file,
        subjects=subjects_table(),
        code=entry_code("task_labels"),
    output:
        task_labels("{task}"),
    params:
        salt=config["privacy"]["salt_file"],
        modalities=task_modalities_csv,
        min_per_class=config["audit"]["min_subjects_per_class"],
        on_small_class=config["audit"]["on_small_class"],
    log:
        log_path("split", "labels", "{task}"),
    conda:
        entry_env("task_labels")
    threads: 1
    resources:
        mem_mb=mem_mb(1000),
        runtime=runtime_min(10),
    shell:
        "python {input.code[0]:q} --labels {input.labels:q} --subjects {input.subjects:q}"
        " --salt-file {params.salt:q} --modalities {params.modalities} --min-subjects-per-class {params.min_per_class}"
        " --on-small-class {params.on_small_class} --out {output:q} > {log:q} 2>&1"


rule leakage_audit:
    input:
        unpack(audit_inputs),
    output:
        audit_report(),
    params:
        on_leak=config["audit"]["on_leak"],
        failed=failed_audit_report(),
    log:
        log_path("split", "audit"),
    conda:
        entry_env("leakage_audit")
    threads: 1
    resources:
        mem_mb=mem_mb(4000),
        runtime=runtime_min(30),
    shell:
        "python {input.code[0]:q} --subjects {input.subjects:q} --image-parts {input.image:q}"
        " --dna-parts {input.dna:q} --on-leak {params.on_leak} --out {output:q}"
        " --failed-out {params.failed:q} > {log:q} 2>&1"


rule meds_layout:
    input:
        unpack(meds_inputs),
    output:
        meds_dataset(),
    params:
        out_dir=meds_root_of,
    log:
        log_path("split", "meds"),
    conda:
        entry_env("meds_layout")
    threads: 1
    resources:
        mem_mb=mem_mb(2000),
        runtime=runtime_min(10),
    shell:
        "python {input.code[0]:q} --parts {input.parts:q} --subjects {input.subjects:q}"
        " --out-dir {params.out_dir:q} > {log:q} 2>&1"


rule split:
    localrule: True
    input:
        all_outputs("split"),
