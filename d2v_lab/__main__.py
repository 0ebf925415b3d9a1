from d2v_lab.cli import main

raise SystemExit(main())
