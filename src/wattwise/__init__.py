"""wattwise: an OpenAI-compatible LLM gateway that gets the most useful tokens out of every dollar and joule.

Usage::

    $ wattwise serve            # the built-in local fleet on ./wattwise.db
    $ wattwise demo             # offline tour: replay fleet, local models, report and plot
"""

__version__ = "0.1.0"
