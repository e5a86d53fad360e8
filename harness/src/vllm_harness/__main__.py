from vllm_harness.cli import main

raise SystemExit(main())
