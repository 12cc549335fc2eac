"""The words on the pages come from the numbers by the stated rules: fusion gain and modality contributions."""

from mmhealth.report.variants_section import variants_section
from mmhealth.report.verdicts import contributions_line, gain_line, verdict_word


def comparison(ci, modalities, other_auroc=0.7, kind="ablation", p=0.04):
    value = (ci[0] + ci[1]) / 2
    return {"metric": "auroc", "difference": {"value": value, "ci": list(ci)}, "p_value": p, "test": "delong",
            "kind": kind, "modalities": modalities, "auroc": {"model": 0.8, "other": other_auroc}, "n_subjects": 40,
            "changes": [f"modalities: {', '.join(modalities)}"]}


def fusion_metrics(**comparisons):
    return {"task": "fused", "modalities": ["image", "dna", "ehr"],
            "comparisons": {"baseline": comparison((0.01, 0.1), [], kind="baseline"), **comparisons}}


def test_gain_is_judged_against_the_best_single_modality():
    metrics = fusion_metrics(only_image=comparison((0.1, 0.3), ["image"], other_auroc=0.6),
                             only_dna=comparison((-0.05, 0.08), ["dna"], other_auroc=0.78),
                             only_ehr=comparison((0.02, 0.2), ["ehr"], other_auroc=0.7))
    line = gain_line(metrics)
    assert line.startswith("gain over the best single modality (only_dna): inconclusive (ΔAUROC +0.015, 95% CI")
    assert "p = 0.040" in line
    metrics["comparisons"]["only_dna"] = comparison((0.01, 0.08), ["dna"], other_auroc=0.78)
    assert gain_line(metrics).startswith("gain over the best single modality (only_dna): yes")
    metrics["comparisons"]["only_dna"] = comparison((-0.2, -0.01), ["dna"], other_auroc=0.9)
    assert gain_line(metrics).startswith("gain over the best single modality (only_dna): no")


def test_each_modality_contributes_only_when_every_leave_one_out_ci_is_above_zero():
    yes = {f"without_{m}": comparison((0.01, 0.1), [x for x in ("image", "dna", "ehr") if x != m])
           for m in ("image", "dna", "ehr")}
    assert contributions_line(fusion_metrics(**yes)).startswith("each modality contributes: yes (image: yes")
    unsure = {**yes, "without_dna": comparison((-0.02, 0.1), ["image", "ehr"])}
    line = contributions_line(fusion_metrics(**unsure))
    assert line.startswith("each modality contributes: inconclusive (") and "dna: inconclusive (ΔAUROC" in line
    harmful = {**yes, "without_ehr": comparison((-0.2, -0.05), ["image", "dna"])}
    assert contributions_line(fusion_metrics(**harmful)).startswith("each modality contributes: no (")
    partial = {k: v for k, v in yes.items() if k != "without_image"}  # one modality untested: never "yes"
    assert contributions_line(fusion_metrics(**partial)).startswith("each modality contributes: inconclusive")


def test_two_modality_fusion_reads_leave_one_out_from_the_single_modality_variants():
    metrics = {"modalities": ["image", "dna"], "comparisons": {
        "only_image": comparison((0.05, 0.2), ["image"], other_auroc=0.6),
        "only_dna": comparison((0.01, 0.1), ["dna"], other_auroc=0.7)}}
    assert gain_line(metrics).startswith("gain over the best single modality (only_dna): yes")
    # without image = only dna: its CI above 0 says image contributes
    assert contributions_line(metrics).startswith("each modality contributes: yes (image: yes (ΔAUROC +0.055")


def test_no_fusion_lines_for_a_single_modality_task_or_without_ablations():
    single = {"modalities": ["image"], "comparisons": {"slow": comparison((0.01, 0.1), ["image"], kind="declared")}}
    assert gain_line(single) is None and contributions_line(single) is None
    assert gain_line(fusion_metrics()) is None and contributions_line(fusion_metrics()) is None
    assert verdict_word({"difference": {"ci": [None, 0.1]}}) == "not computed"


def test_the_variants_section_tabulates_each_variant_with_its_p_value():
    metrics = fusion_metrics(only_image=comparison((0.1, 0.3), ["image"], p=0.0004),
                             slow=comparison((-0.1, 0.1), ["image", "dna", "ehr"], kind="declared", p=0.5))
    html = variants_section(metrics)
    assert 'id="variants"' in html and "gain over the best single modality (only_image): yes" in html
    assert "<td>only_image</td><td>ablation</td><td>modalities: image</td>" in html and "&lt; 0.001" in html
    assert "<td>slow</td><td>declared</td>" in html and "<td>0.500</td>" in html
    assert variants_section({"modalities": ["image"], "comparisons": {}}) == ""
