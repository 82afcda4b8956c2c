"""Data sources (image folders, tables, webdataset tars, clip-retrieval folders) and the demo world."""
