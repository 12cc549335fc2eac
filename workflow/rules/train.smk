# One fine-tuning job per task (several modalities = late fusion); the model folder is the artifact.


rule finetune:
    input:
        unpack(train_inputs),
    output:
        directory(model_dir("{task}")),
    params:
        model=model_params,
        finetune=finetune_params,
        modalities=task_modalities_csv,
        shards=shards_json(["train", "val"]),
        tokenizers=tokenizers_json,
        launcher=train_launcher,
        checkpoints=lambda wildcards: checkpoint_dir(wildcards.task),
    log:
        log_path("train", "{task}"),
    benchmark:
        benchmark_path("train", "{task}")
    conda:
        entry_env("finetune")
    threads: 2
    resources:
        gpu=task_gpus,
        mem_mb=mem_mb(8000),
        runtime=runtime_min(240),
    shell:
        "{params.launcher} {input.code[0]:q} --task {wildcards.task} --modalities {params.modalities}"
        " --labels {input.labels:q} --shards-json {params.shards:q} --tokenizers-json {params.tokenizers:q}"
        " --model-json {params.model:q}"
        " --finetune-json {params.finetune:q} --threads {threads} --out-dir {output:q}"
        " --checkpoint-dir {params.checkpoints:q} > {log:q} 2>&1"


rule train:
    localrule: True
    input:
        all_outputs("train"),
