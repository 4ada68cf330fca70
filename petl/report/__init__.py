"""What the book's chapters call: the run records of their grids as tables beside the paper's numbers, figures,
and the sentences glued into their prose. The book never trains.

    selection   which records a chapter reads: the points of the grid files it names (petl.sweep.plan), by run id
    paper       the paper's numbers (data/paper/results.csv) and the preset -> paper-row table (presets.csv)
    prose       comparison sentences computed from summaries
    plots       the figures (glued, placed with a numbered caption by the chapter)
    display     tables that fit the page
    generation  the generation grid's table and sentences
    benchmarks  the one reader of the benchmark record format (runs/benchmarks/*.json)
    cost        what the book's grids cost on a CPU
    reference   the record of the agreement with the paper's reference code
    accounting  the paper's % column against petl's count, for every counted row of presets.csv
    provenance  the commits, environments and devices behind each chapter
    learning_rates  the protocol's learning-rate sweeps: each method's candidates, the rate chosen on dev
    verdict     the protocol's verdicts on the paper's claims (book/claims.yaml): paired differences with intervals
    traces      the traced runs (runs/traces): each prefix layer's gate λ and the inputs' spread over training

Imports go one way: report -> petl.runs (and petl.sweep.plan); nothing in petl.runs, petl.sweep or petl.train
imports report.
"""

from petl.report import accounting, provenance, traces
from petl.report.benchmarks import (GPU_V2_COMMAND, MIN_ROUNDS_FOR_INTERVAL, benchmark_counted, benchmark_figure,
                                    benchmark_parity, benchmark_records, benchmark_tables, benchmark_verdict,
                                    gpu_v2_records, gpu_v2_section, gpu_v2_table, has_intervals, houlsby_traffic,
                                    mam_memory, record_name, records_named)
from petl.report.cost import cpu_timing_summary, grid_cost_on_cpu, protocol_cost
from petl.report.display import show, table_html
from petl.report.generation import (GENERATION_TABLES, compare_generation, generation_setting, generation_table,
                                    generation_vs_lead)
from petl.report.learning_rates import (chosen_rates, final_loss, loss_curves, loss_figure, lr_figure, lr_sweeps,
                                        paper_lr, sweep_of)
from petl.report.paper import (PAPER_CSV, PRESETS_CSV, paper_curves, paper_gap, paper_number, paper_results,
                               paper_row, paper_value, presets, side_by_side, table_name)
from petl.report.plots import budget_plot, curves_plot, errorbar_plot, glue_figure, pareto_plot
from petl.report.prose import (METRIC_LABELS, backbone, below, best, compare, compare_baseline, devices,
                               largest_std, majority_verdict, rank_of, relation, setting, spread, stuck_at_majority,
                               versus)
from petl.report.reference import reference_agreement
from petl.report.selection import (KEY_COLUMNS, ROOT, GridRuns, baseline, baseline_records, book_runs,
                                   describe_points, grid_points, grid_runs, label_of, lr_choice, pick, ran_on,
                                   records, runs_dir, scale_of, select, size_of, summarize)
from petl.report.verdict import (claim_verdict, claims, paired_difference, verdict_caption, verdict_summary,
                                 verdict_table)

variant_label = label_of  # the name before the split
