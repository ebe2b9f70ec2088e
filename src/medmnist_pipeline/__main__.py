from medmnist_pipeline.cli import main

raise SystemExit(main())
