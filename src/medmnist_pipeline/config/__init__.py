"""params.yaml: the schema, one class per section, validated on load (every key explicit, no hidden defaults).

- params.py: ``Params`` (the whole file), the data, augment, loader, tracking and evaluate sections, ``load_params``.
- train.py: the ``baseline`` and ``train`` sections (model, optimizer, schedule, trainer).
- tune.py: the ``tune`` section and the checks of its search against the train schema.
- io.py: the strict ``Section`` base, bounded number types, reading YAML the way DVC does, errors by full key.

May import: the shared base (errors, metadata) and transforms (lazily, for the deep checks). Imported by every
package above it.
"""
