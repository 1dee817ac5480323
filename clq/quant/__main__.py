"""``python -m clq.quant``: the quantization error report (same as the ``clq-quant-report`` console script)."""

from clq.quant.report import main

raise SystemExit(main())
