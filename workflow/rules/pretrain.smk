# Self-supervised pretraining, one job per modality (config `pretrain`, or a task's model.pretrained): the
# train-split token rows, labelled or not, teach an encoder that tasks then fine-tune.


rule pretrain_modality:
    input:
        unpack(pretrain_inputs),
    output:
        directory(pretrained_dir("{modality}")),
    params:
        pretrain=pretrain_params,
        shards=pretrain_shards_json,
        checkpoints=lambda wildcards: pretrain_checkpoint_dir(wildcards.modality),
    log:
        log_path("pretrain", "{modality}"),
    benchmark:
        benchmark_path("pretrain", "{modality}")
    conda:
        entry_env("pretrain_modality")
    threads: 2
    resources:
        gpu=1,
        mem_mb=mem_mb(8000),
        runtime=runtime_min(240),
    shell:
        "python {input.code[0]:q} --modality {wildcards.modality} --shards-json {params.shards:q}"
        " --tokenizer-dir {input.tokenizer:q} --pretrain-json {params.pretrain:q} --threads {threads}"
        " --out-dir {output:q} --checkpoint-dir {params.checkpoints:q} > {log:q} 2>&1"


rule pretrain:
    localrule: True
    input:
        all_outputs("pretrain"),
