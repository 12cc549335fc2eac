# Raw exports -> clean records, one job per modality and subject shard (RAW_INDEX in common.smk says which
# raw files hold which shard's subjects), then one merge per modality of quarantine and manifest.


rule ingest_dicom:
    input:
        raw=dicom_shard_files,
        code=entry_code("ingest_dicom"),
    output:
        part=ingest_part("image", "{shard}"),
        quarantine=shard_quarantine("image", "{shard}"),
        manifest=shard_manifest("image", "{shard}"),
    params:
        root=raw_root("dicom"),
        salt=config["privacy"]["salt_file"],
        privacy=privacy_json,
        source_map=source_map("image"),
        shard=shard_number,
        shards=config["shards"],
        image_size=config["ingest"]["dicom"]["image_size"],
    log:
        log_path("ingest", "image", "shard-{shard}"),
    benchmark:
        benchmark_path("ingest", "image", "shard-{shard}")
    conda:
        entry_env("ingest_dicom")
    threads: 1
    resources:
        mem_mb=mem_mb(4000),
        runtime=runtime_min(60),
    shell:
        "python {input.code[0]:q} --input {params.root:q} --files {input.raw:q} --shard {params.shard}"
        " --shards {params.shards} --salt-file {params.salt:q} --out-part {output.part:q}"
        " --quarantine {output.quarantine:q} --manifest {output.manifest:q}"
        " --privacy-json {params.privacy:q} --source-map {params.source_map:q} --image-size {params.image_size}"
        " > {log:q} 2>&1"


rule ingest_fasta:
    input:
        raw=fasta_shard_files,
        code=entry_code("ingest_fasta"),
    output:
        part=ingest_part("dna", "{shard}"),
        quarantine=shard_quarantine("dna", "{shard}"),
        manifest=shard_manifest("dna", "{shard}"),
    params:
        root=raw_root("fasta"),
        salt=config["privacy"]["salt_file"],
        privacy=privacy_json,
        source_map=source_map("dna"),
        shard=shard_number,
        shards=config["shards"],
        regex=config["inputs"]["fasta_subject_regex"],
        window=config["ingest"]["fasta"]["window"],
        stride=config["ingest"]["fasta"]["stride"],
        max_n=config["ingest"]["fasta"]["max_n_fraction"],
        n_policy=config["ingest"]["fasta"]["n_policy"],
    log:
        log_path("ingest", "dna", "shard-{shard}"),
    benchmark:
        benchmark_path("ingest", "dna", "shard-{shard}")
    conda:
        entry_env("ingest_fasta")
    threads: 1
    resources:
        mem_mb=mem_mb(2000),
        runtime=runtime_min(60),
    shell:
        "python {input.code[0]:q} --input {params.root:q} --files {input.raw:q} --shard {params.shard}"
        " --shards {params.shards} --salt-file {params.salt:q} --out-part {output.part:q}"
        " --quarantine {output.quarantine:q} --manifest {output.manifest:q}"
        " --privacy-json {params.privacy:q} --source-map {params.source_map:q} --subject-regex {params.regex:q}"
        " --window {params.window} --stride {params.stride} --max-n-fraction {params.max_n}"
        " --n-policy {params.n_policy} > {log:q} 2>&1"


rule ingest_ehr:
    input:
        staged=ehr_shard_files,
        code=entry_code("ingest_ehr"),
    output:
        part=ingest_part("ehr", "{shard}"),
        quarantine=shard_quarantine("ehr", "{shard}"),
        manifest=shard_manifest("ehr", "{shard}"),
    params:
        tables=ehr_shard_tables_json,
        salt=config["privacy"]["salt_file"],
        privacy=privacy_json,
        source_map=source_map("ehr"),
        shard=shard_number,
        shards=config["shards"],
    log:
        log_path("ingest", "ehr", "shard-{shard}"),
    benchmark:
        benchmark_path("ingest", "ehr", "shard-{shard}")
    conda:
        entry_env("ingest_ehr")
    threads: 1
    resources:
        mem_mb=mem_mb(4000),
        runtime=runtime_min(60),
    shell:
        "python {input.code[0]:q} --tables-json {params.tables:q} --shard {params.shard}"
        " --shards {params.shards} --salt-file {params.salt:q} --out-part {output.part:q}"
        " --quarantine {output.quarantine:q} --manifest {output.manifest:q}"
        " --privacy-json {params.privacy:q} --source-map {params.source_map:q} > {log:q} 2>&1"


rule ingest_manifest:
    input:
        manifests=shard_manifests,
        quarantines=shard_quarantines,
        code=entry_code("ingest_manifest"),
    output:
        manifest=result("ingest", "{modality}", "manifest.json"),
        quarantine=result("ingest", "{modality}", "quarantine.parquet"),
    params:
        max_fraction=max_quarantined_fraction,
    log:
        log_path("ingest", "{modality}", "manifest"),
    conda:
        entry_env("ingest_manifest")
    threads: 1
    resources:
        mem_mb=mem_mb(1000),
        runtime=runtime_min(10),
    shell:
        "python {input.code[0]:q} --manifests {input.manifests:q} --quarantines {input.quarantines:q}"
        " --out-manifest {output.manifest:q} --out-quarantine {output.quarantine:q}"
        " --max-quarantined-fraction {params.max_fraction} > {log:q} 2>&1"


rule ingest:
    localrule: True
    input:
        all_outputs("ingest"),
