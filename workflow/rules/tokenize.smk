# Tokenisers fitted on the train split only; then one job per ingest shard writes its train/val/test rows.
# A vocabulary, once fitted, is kept as data grows (its ingest inputs are ancient): new patients re-tokenise
# only their own shard. Refit on purpose with `--forcerun fit_tokenizer`; param or code changes refit too.


rule fit_tokenizer:
    input:
        unpack(tokenizer_inputs),
    output:
        directory(tokenizer_dir("{modality}")),
    params:
        tokenize=tokenize_params,
        fractions=split_fractions_json,
    log:
        log_path("tokenize", "{modality}", "fit"),
    benchmark:
        benchmark_path("tokenize", "{modality}", "fit")
    conda:
        entry_env("tokenize_modality")
    threads: 1
    resources:
        mem_mb=mem_mb(4000),
        runtime=runtime_min(30),
    shell:
        "python {input.code[0]:q} fit --modality {wildcards.modality} --ingest-parts {input.parts:q}"
        " --fractions {params.fractions:q} --split-files {input.splits:q} --out-dir {output:q} --params-json {params.tokenize:q} > {log:q} 2>&1"


rule tokenize_shard:
    input:
        part=tokenize_shard_input,
        splits=split_assignment,
        tokenizer=tokenizer_dir("{modality}"),
        code=modality_code("tokenize_modality"),
    output:
        train=token_shard("{modality}", "train", "{shard}"),
        val=token_shard("{modality}", "val", "{shard}"),
        test=token_shard("{modality}", "test", "{shard}"),
    params:
        tokenize=tokenize_params,
        fractions=split_fractions_json,
    log:
        log_path("tokenize", "{modality}", "shard-{shard}"),
    benchmark:
        benchmark_path("tokenize", "{modality}", "shard-{shard}")
    conda:
        entry_env("tokenize_modality")
    threads: 1
    resources:
        mem_mb=mem_mb(4000),
        runtime=runtime_min(30),
    shell:
        "python {input.code[0]:q} encode --modality {wildcards.modality} --ingest-part {input.part:q}"
        " --fractions {params.fractions:q} --split-file {input.splits:q} --tokenizer-dir {input.tokenizer:q} --out-train {output.train:q}"
        " --out-val {output.val:q} --out-test {output.test:q} --params-json {params.tokenize:q}"
        " > {log:q} 2>&1"


# Another tokenizer's view of a modality (`tokens/<modality>@<view>/`, for a pretrained encoder with a tokenizer
# of its own; scripts/mmhealth/core/tokenizer_binding.py): the same jobs, the tokenizer copied, not fitted.
use rule fit_tokenizer as fit_view_tokenizer with:
    output:
        directory(tokenizer_dir("{modality}", "{view}")),
    params:
        tokenize=view_tokenize_params,
    log:
        log_path("tokenize", token_view_folder("{modality}", "{view}"), "fit"),
    benchmark:
        benchmark_path("tokenize", token_view_folder("{modality}", "{view}"), "fit")


use rule tokenize_shard as tokenize_view_shard with:
    input:
        part=tokenize_shard_input,
        splits=split_assignment,
        tokenizer=tokenizer_dir("{modality}", "{view}"),
        code=modality_code("tokenize_modality"),
    output:
        train=token_shard("{modality}", "train", "{shard}", "{view}"),
        val=token_shard("{modality}", "val", "{shard}", "{view}"),
        test=token_shard("{modality}", "test", "{shard}", "{view}"),
    params:
        tokenize=view_tokenize_params,
    log:
        log_path("tokenize", token_view_folder("{modality}", "{view}"), "shard-{shard}"),
    benchmark:
        benchmark_path("tokenize", token_view_folder("{modality}", "{view}"), "shard-{shard}")


rule tokenize:
    localrule: True
    input:
        all_outputs("tokenize"),
