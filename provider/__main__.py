"""The ServedModel component provider plugin (PulumiPlugin.yaml beside this file).

The Python language host runs this folder with the plugin's venv, where requirements.txt installed
the servedmodel package: the provider, its schema (the committed schema.json is the same inference)
and the component all come from that installed package.
"""
from servedmodel.components.provider import main

if __name__ == "__main__":
    main()
