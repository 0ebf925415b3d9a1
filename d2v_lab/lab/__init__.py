"""The workbench around the package: figures (draw only), notebook widgets, demos and the headless tour.
Nothing below ``lab`` imports it."""
