"""KFP pipelines built from components/: ``benchmark`` and ``retrain``; compiled YAML in compiled/.

make compile                      # writes pipelines/compiled/*.yaml
python -m pipelines.compile --out DIR
"""
