# At the end of every run, successful or not, the person running it reads what was ingested, refused and
# used: counts and top reasons per modality, subjects per split, and labels that match no data, by their
# raw ids (printed to the console only, never written under results/).


def print_data_accounting(failed):
    """Best effort: an accounting problem must never hide the run's own result or error."""
    try:
        from mmhealth.report.end_of_run import end_of_run_summary

        print(end_of_run_summary(config, RESULTS, INGESTED, TASKS, failed), file=sys.stderr)
    except Exception as error:  # noqa: BLE001 - reporting only
        print(f"(data accounting not available: {error})", file=sys.stderr)


onsuccess:
    print_data_accounting(failed=False)


onerror:
    print_data_accounting(failed=True)
