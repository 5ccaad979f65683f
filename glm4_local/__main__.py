from glm4_local.cli import main

main()
