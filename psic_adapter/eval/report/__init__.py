"""Reports: ``metrics.json`` and a self-contained ``report.html`` (:mod:`.html`), with plots
(:mod:`.plots`), image rows (:mod:`.gallery`) and rate-distortion with Bjontegaard deltas (:mod:`.rd`)."""

import lazy_loader

# submodules load on first use: importing one part never drags in the others (and no import cycle)
__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        'html': ['REPORT_NAME', 'ReportRun', 'headline_sentences', 'render', 'write_report', 'write_results'],
        'rd': ['bd_deltas', 'bd_table', 'rd_points'],
    },
)
