"""What the tests share: tiny checkpoints and GGUFs (factory, craft), scripted tool models (toolscripts),
servers and terminals driven as a user drives them (serving, terminal, pagedriver), the CLI (cli), local
stand-ins for the Hub, the web and documents (hubserver, webfixtures, zimfixtures, docfixtures, mcpfixtures),
and the children tests start (children). Imported as `helpers.NAME`; pytest puts tests/ on the path."""
