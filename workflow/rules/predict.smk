# New data through trained tasks (config `predict`): each batch is ingested as one shard with the same
# pseudonym key (a known patient keeps its subject id), tokenised with the training run's tokenizers (never
# refitted on new data), and every unit found is predicted. Ingestion reuses the ingest rules' commands
# (`use rule ... with` replaces input and output whole and overrides only the params named here).


use rule ingest_dicom as predict_ingest_dicom with:
    input:
        raw=predict_raw_files("dicom"),
        code=entry_code("ingest_dicom"),
    output:
        part=predict_ingest_file("{batch}", "image", "part-0.parquet"),
        quarantine=predict_ingest_file("{batch}", "image", "quarantine.parquet"),
        manifest=predict_ingest_file("{batch}", "image", "manifest.json"),
    params:
        root=predict_raw_root("dicom"),
        shard=0,
        shards=1,
    log:
        log_path("predict", "{batch}", "ingest-image"),
    benchmark:
        benchmark_path("predict", "{batch}", "ingest-image")


use rule ingest_fasta as predict_ingest_fasta with:
    input:
        raw=predict_raw_files("fasta"),
        code=entry_code("ingest_fasta"),
    output:
        part=predict_ingest_file("{batch}", "dna", "part-0.parquet"),
        quarantine=predict_ingest_file("{batch}", "dna", "quarantine.parquet"),
        manifest=predict_ingest_file("{batch}", "dna", "manifest.json"),
    params:
        root=predict_raw_root("fasta"),
        shard=0,
        shards=1,
        regex=predict_regex,
    log:
        log_path("predict", "{batch}", "ingest-dna"),
    benchmark:
        benchmark_path("predict", "{batch}", "ingest-dna")


use rule ingest_ehr as predict_ingest_ehr with:
    input:
        staged=predict_raw_files("ehr"),
        code=entry_code("ingest_ehr"),
    output:
        part=predict_ingest_file("{batch}", "ehr", "part-0.parquet"),
        quarantine=predict_ingest_file("{batch}", "ehr", "quarantine.parquet"),
        manifest=predict_ingest_file("{batch}", "ehr", "manifest.json"),
    params:
        tables=predict_ehr_tables_json,
        shard=0,
        shards=1,
    log:
        log_path("predict", "{batch}", "ingest-ehr"),
    benchmark:
        benchmark_path("predict", "{batch}", "ingest-ehr")


rule predict_tokenize:
    input:
        part=predict_tokenize_input,
        tokenizer=tokenizer_dir("{modality}"),
        code=modality_code("tokenize_modality"),
    output:
        predict_tokens("{batch}", "{modality}"),
    params:
        tokenize=tokenize_params,
    log:
        log_path("predict", "{batch}", "tokenize-{modality}"),
    benchmark:
        benchmark_path("predict", "{batch}", "tokenize-{modality}")
    conda:
        entry_env("tokenize_modality")
    threads: 1
    resources:
        mem_mb=mem_mb(4000),
        runtime=runtime_min(30),
    shell:
        "python {input.code[0]:q} encode --modality {wildcards.modality} --ingest-part {input.part:q}"
        " --tokenizer-dir {input.tokenizer:q} --out-all {output:q} --params-json {params.tokenize:q}"
        " > {log:q} 2>&1"


use rule predict_tokenize as predict_tokenize_view with:
    input:
        part=predict_tokenize_input,
        tokenizer=tokenizer_dir("{modality}", "{view}"),
        code=modality_code("tokenize_modality"),
    output:
        predict_tokens("{batch}", "{modality}", "{view}"),
    params:
        tokenize=view_tokenize_params,
    log:
        log_path("predict", "{batch}", "tokenize-" + token_view_folder("{modality}", "{view}")),
    benchmark:
        benchmark_path("predict", "{batch}", "tokenize-" + token_view_folder("{modality}", "{view}"))


rule predict_task:
    input:
        unpack(predict_task_inputs),
    output:
        predictions_file("{batch}", "{task}"),
    params:
        shards=predict_shards_json,
    log:
        log_path("predict", "{batch}", "{task}"),
    benchmark:
        benchmark_path("predict", "{batch}", "{task}")
    conda:
        entry_env("predict_task")
    threads: 1
    resources:
        mem_mb=mem_mb(4000),
        runtime=runtime_min(60),
    shell:
        "python {input.code[0]:q} --model-dir {input.model:q} --shards-json {params.shards:q}"
        " --training-subjects {input.subjects:q} --threads {threads} --out {output:q} > {log:q} 2>&1"


rule predict_report:
    input:
        unpack(predict_report_inputs),
    output:
        predict_report("{batch}"),
    log:
        log_path("predict", "{batch}", "report"),
    conda:
        entry_env("predict_report")
    threads: 1
    resources:
        mem_mb=mem_mb(1000),
        runtime=runtime_min(10),
    shell:
        "python {input.code[0]:q} --batch {wildcards.batch} --predictions {input.predictions:q}"
        " --manifests {input.manifests:q} --eval-reports {input.eval_reports:q} --out {output:q} > {log:q} 2>&1"


rule predict:
    localrule: True
    input:
        predict_outputs(),
