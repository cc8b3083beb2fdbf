"""What a trace looks like to a person: ``page`` (the self-contained HTML report: its data, checks and the
file), ``html`` (its HTML/SVG templates), ``text`` (the CLI's plain-text views of a trace and a neuron card)
and ``assets/`` (the CSS and JS inlined into the report and the study site)."""
