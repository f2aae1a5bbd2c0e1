"""The MLflow UI walk-through the node-side notebooks give, performed in a real browser.

- `browser`: Debian's Chromium, installed when missing and driven headless by Playwright, with every
  request that would leave 127.0.0.0/8 refused inside the browser;
- `steps`: the walk, step by step, each quoting the lesson's words and using the labels they name;
- `walk`: runs the steps against a server, records the labels each used, saves the figures;
- `figures`: crops a screenshot to what matters, marks where to look, writes a small WebP;
- `screens`: `python -m chi_helpers screens`, which regenerates the figures from a local series run.
"""
