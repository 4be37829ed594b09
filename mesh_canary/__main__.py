from mesh_canary.cli import main

main()
