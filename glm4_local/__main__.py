from glm4_local.cli import app

app(prog_name="glm4-local")
