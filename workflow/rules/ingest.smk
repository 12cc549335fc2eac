# Raw exports -> clean records per modality, partitioned by subject shard, with quarantine and manifest.


rule ingest_dicom:
    input:
        raw=raw_files("dicom"),
        code=stage_code("ingest_dicom"),
    output:
        parts=ingest_parts("image"),
        quarantine=result("ingest", "image", "quarantine.parquet"),
        manifest=result("ingest", "image", "manifest.json"),
    params:
        root=raw_root("dicom"),
        salt=config["privacy"]["salt_file"],
        out_dir=folder_of_manifest,
        shards=config["shards"],
        image_size=config["ingest"]["dicom"]["image_size"],
    log:
        log_path("ingest", "image"),
    benchmark:
        benchmark_path("ingest", "image")
    conda:
        stage_env("ingest_dicom")
    threads: 1
    resources:
        mem_mb=mem_mb(4000),
        runtime=runtime_min(60),
    shell:
        "python {input.code[0]:q} --input {params.root:q} --salt-file {params.salt:q}"
        " --out-dir {params.out_dir:q} --shards {params.shards} --image-size {params.image_size}"
        " > {log:q} 2>&1"


rule ingest_fasta:
    input:
        raw=raw_files("fasta"),
        code=stage_code("ingest_fasta"),
    output:
        parts=ingest_parts("dna"),
        quarantine=result("ingest", "dna", "quarantine.parquet"),
        manifest=result("ingest", "dna", "manifest.json"),
    params:
        root=raw_root("fasta"),
        salt=config["privacy"]["salt_file"],
        out_dir=folder_of_manifest,
        shards=config["shards"],
        regex=config["inputs"]["fasta_subject_regex"],
        window=config["ingest"]["fasta"]["window"],
        stride=config["ingest"]["fasta"]["stride"],
        max_n=config["ingest"]["fasta"]["max_n_fraction"],
    log:
        log_path("ingest", "dna"),
    benchmark:
        benchmark_path("ingest", "dna")
    conda:
        stage_env("ingest_fasta")
    threads: 1
    resources:
        mem_mb=mem_mb(2000),
        runtime=runtime_min(60),
    shell:
        "python {input.code[0]:q} --input {params.root:q} --salt-file {params.salt:q}"
        " --out-dir {params.out_dir:q} --shards {params.shards} --subject-regex {params.regex:q}"
        " --window {params.window} --stride {params.stride} --max-n-fraction {params.max_n}"
        " > {log:q} 2>&1"


rule ingest_ehr:
    input:
        tables=ehr_tables,
        code=stage_code("ingest_ehr"),
    output:
        parts=ingest_parts("ehr"),
        quarantine=result("ingest", "ehr", "quarantine.parquet"),
        manifest=result("ingest", "ehr", "manifest.json"),
    params:
        tables=ehr_tables_json,
        salt=config["privacy"]["salt_file"],
        out_dir=folder_of_manifest,
        shards=config["shards"],
    log:
        log_path("ingest", "ehr"),
    benchmark:
        benchmark_path("ingest", "ehr")
    conda:
        stage_env("ingest_ehr")
    threads: 1
    resources:
        mem_mb=mem_mb(4000),
        runtime=runtime_min(60),
    shell:
        "python {input.code[0]:q} --tables-json {params.tables:q} --salt-file {params.salt:q}"
        " --out-dir {params.out_dir:q} --shards {params.shards} > {log:q} 2>&1"


rule ingest:
    localrule: True
    input:
        all_outputs("ingest"),
