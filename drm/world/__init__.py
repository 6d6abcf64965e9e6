"""The embedded synthetic world: its params, exact rendering, data source and `world` describe provider."""
